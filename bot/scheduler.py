"""Background jobs on APScheduler 3's ``AsyncIOScheduler``: nightly retraining and cache warm-up.

Every job:

* runs through :meth:`JobScheduler._run`, which records start, finish, result and any error in a
  :class:`JobState` (shown by ``/status``) and logs failures with their traceback: a job never fails
  silently and never takes the scheduler down;
* has ``max_instances=1`` (a second run while one is going is refused and recorded as skipped),
  ``coalesce=True`` (runs missed while the loop was busy or the machine slept collapse into one) and a
  ``misfire_grace_time`` (a run later than that is dropped until its next time, not run at a bad hour);
* keeps blocking work off the event loop: the training pipeline runs in a worker thread
  (``asyncio.to_thread``).

Retraining exports the votes from the feedback store, calls the training pipeline
(``training.pipeline.run_retraining``, imported lazily; tests inject a callable) and records the run and
its validation summary in the store. The pipeline validates and promotes adapters atomically; a failed or
worse run leaves the serving adapters as they are. ``nightly_hour`` is in the scheduler's time zone
(the machine's local zone unless one is given).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger

    from bot.storage import FeedbackStore
    from engine.api import Engine
    from hexcore.settings import Settings
    from training.pipeline import RetrainReport

log = logging.getLogger(__name__)

RETRAIN = "retrain"
WARM_UP = "warm-up"

RetrainFn = Callable[["Settings", "list[str] | None", "list[dict]"], object]
"""``(settings, experts or None for all, feedback examples) -> RetrainReport`` (or any report
:func:`report_summary` reads); runs in a thread."""
WarmUpFn = Callable[[], object]
"""Async (awaited on the loop) or sync (run in a thread): load the index and model, precompute answers."""
Clock = Callable[[], dt.datetime]

RetrainRequest = Literal["started", "running", "unavailable"]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def default_retrain(settings: Settings, experts: list[str] | None, examples: list[dict]) -> RetrainReport:
    """The real pipeline, imported only when a run starts (it pulls in torch and peft)."""
    from hexcore.state_lock import state_lock

    # The state dir's lock, as `hexcore train` takes it: a run while a CLI train, promote or index build
    # writes the same state dir fails at once ("another ... is running (pid N)") and is recorded as failed.
    with state_lock(settings.paths.state_dir, "nightly retraining"):
        from training.pipeline import run_retraining

        return run_retraining(settings, experts, examples)


@dataclass
class JobState:
    """What ``/status`` shows about one job."""

    id: str
    name: str
    running: bool = False
    runs: int = 0
    failures: int = 0
    skipped: int = 0
    last_started: dt.datetime | None = None
    last_finished: dt.datetime | None = None
    last_result: str | None = None
    """``ok``, ``failed``, ``cancelled``, or the job's own summary (``promoted``, ``skipped: ...``)."""
    last_error: str | None = None
    last_error_at: dt.datetime | None = None
    last_skip: str | None = None
    """Why the scheduler last refused or dropped a run (already running, missed its window)."""
    next_run: dt.datetime | None = None


# ----------------------------------------------------------------------------- retraining reports


@dataclass(frozen=True, slots=True)
class ExpertResult:
    expert: str
    promoted: bool | None
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


def report_summary(report: object) -> dict:
    """A JSON-able dict of whatever the pipeline returned (``to_json()`` preferred)."""
    if report is None:
        return {}
    if hasattr(report, "to_json"):
        report = report.to_json()
    if isinstance(report, str):
        try:
            report = json.loads(report)
        except ValueError:
            return {"result": report}
    if isinstance(report, Mapping):
        return json.loads(json.dumps(report, default=str))
    return {"result": repr(report)}


def expert_results(summary: Mapping | None) -> list[ExpertResult]:
    """Per-expert outcome from a validation summary: ``{"experts": {name: {...}}}``, a list of
    ``{"expert": name, ...}``, or ``{name: {"promoted": ...}}``."""
    if not summary:
        return []
    entries: object = summary.get("experts", summary)
    if isinstance(entries, Mapping):
        items = [(str(k), v) for k, v in entries.items() if isinstance(v, Mapping)]
    elif isinstance(entries, Sequence) and not isinstance(entries, str):
        items = [
            (str(v.get("expert") or v.get("name") or i), v)
            for i, v in enumerate(entries)
            if isinstance(v, Mapping)
        ]
    else:
        return []
    out = []
    for name, entry in items:
        if "promoted" not in entry and "metrics" not in entry:
            continue
        metrics = entry.get("metrics") or {}
        numeric = {
            str(k): float(v)
            for k, v in (metrics.items() if isinstance(metrics, Mapping) else [])
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        promoted = entry.get("promoted")
        out.append(
            ExpertResult(
                name, None if promoted is None else bool(promoted), str(entry.get("reason") or ""), numeric
            )
        )
    return out


def run_status(summary: Mapping | None) -> str:
    """``promoted`` (some adapter replaced), ``kept`` (validated, none better), ``finished`` (no per-expert data)."""
    results = expert_results(summary)
    if any(r.promoted for r in results):
        return "promoted"
    if any(r.promoted is False for r in results):
        return "kept"
    return "finished"


async def _call(fn: Callable[..., object], *args: object) -> object:
    """Await an async callable on the loop; run a sync one in a thread (it may block)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    return await result if inspect.isawaitable(result) else result


# ------------------------------------------------------------------------------------ scheduler


@dataclass(slots=True)
class _Manual:
    experts: list[str] | None


class JobScheduler:
    """The bot's jobs. ``start()`` needs a running event loop; ``await close()`` on shutdown."""

    def __init__(
        self,
        settings: Settings,
        store: FeedbackStore | None = None,
        *,
        retrain: RetrainFn | None = default_retrain,
        warm_up: WarmUpFn | None = None,
        after_retrain: Callable[[object], object] | None = None,
        clock: Clock = utcnow,
        timezone: dt.tzinfo | str | None = None,
        warm_up_interval_s: float = 1800.0,
        misfire_grace_s: int = 3600,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._retrain_fn = retrain
        self._warm_up_fn = warm_up
        self._after_retrain = after_retrain
        self._manual: _Manual | None = None
        self._tasks: set[asyncio.Task] = set()
        self._idle: dict[str, asyncio.Event] = {}
        self.misfire_grace_s = misfire_grace_s
        options: dict[str, Any] = {}
        if timezone is not None:
            options["timezone"] = timezone
        self.scheduler = AsyncIOScheduler(**options)
        self.scheduler.add_listener(self._on_skip, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self.states: dict[str, JobState] = {}
        if retrain is not None:
            hour = settings.training.nightly_hour
            self._add(RETRAIN, "Nightly retraining", self._retrain, CronTrigger(hour=hour, minute=0))
        if warm_up is not None:
            interval = IntervalTrigger(seconds=warm_up_interval_s)
            # First run at start: the index and model are loaded before the first user asks.
            self._add(
                WARM_UP,
                "Cache warm-up",
                self._warm_up,
                interval,
                next_run_time=dt.datetime.now(dt.UTC),
                misfire_grace_time=max(1, int(warm_up_interval_s // 2)),
            )

    def _add(
        self, job_id: str, name: str, body: Callable[[], Awaitable[str]], trigger: BaseTrigger, **kw: Any
    ) -> None:
        self.states[job_id] = JobState(job_id, name)
        options = {"max_instances": 1, "coalesce": True, "misfire_grace_time": self.misfire_grace_s, **kw}
        self.scheduler.add_job(self._run, trigger, args=(job_id, body), id=job_id, name=name, **options)

    # ---------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self.scheduler.running

    def start(self) -> None:
        for job_id in self.states:
            self._idle_event(job_id).set()
        self.scheduler.start()

    async def close(self) -> None:
        """Stop scheduling and cancel running jobs (a retraining thread finishes on its own; its run is
        recorded as interrupted)."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a loop callback

    def _idle_event(self, job_id: str) -> asyncio.Event:
        return self._idle.setdefault(job_id, asyncio.Event())

    async def wait_idle(self, job_id: str, timeout: float | None = None) -> JobState:
        """Wait until ``job_id`` has no run going or requested (tests, shutdown)."""
        async with asyncio.timeout(timeout):
            await self._idle_event(job_id).wait()
        return self.states[job_id]

    # --------------------------------------------------------------------------- the wrapper

    async def _run(self, job_id: str, body: Callable[[], Awaitable[str]]) -> None:
        """Every job runs through here: recorded, logged, never raising into the scheduler."""
        state = self.states[job_id]
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._idle_event(job_id).clear()
        state.running = True
        state.runs += 1
        state.last_started = self.clock()
        log.info("job %s started", job_id)
        try:
            state.last_result = await body() or "ok"
        except asyncio.CancelledError:
            state.last_result = "cancelled"
            log.warning("job %s cancelled", job_id)
            raise
        except Exception as exc:
            state.failures += 1
            state.last_result = "failed"
            state.last_error = f"{type(exc).__name__}: {exc}"
            state.last_error_at = self.clock()
            log.exception("job %s failed", job_id)
        else:
            log.info("job %s finished: %s", job_id, state.last_result)
        finally:
            state.running = False
            state.last_finished = self.clock()
            if task is not None:
                self._tasks.discard(task)
            if not (job_id == RETRAIN and self._manual is not None):
                self._idle_event(job_id).set()

    def _on_skip(self, event: JobEvent) -> None:
        state = self.states.get(event.job_id)
        if state is None:
            return
        state.skipped += 1
        if event.code == EVENT_JOB_MAX_INSTANCES:
            state.last_skip = f"{self.clock():%Y-%m-%d %H:%M %Z}: refused, the previous run was still going"
        else:
            state.last_skip = f"missed the run due at {event.scheduled_run_time:%Y-%m-%d %H:%M %Z}"
        log.warning("job %s: %s", event.job_id, state.last_skip)

    # --------------------------------------------------------------------------------- control

    def run_now(self, job_id: str) -> None:
        """Make the scheduler run ``job_id`` at once (its regular schedule continues afterwards)."""
        self.scheduler.modify_job(job_id, next_run_time=dt.datetime.now(self.scheduler.timezone))

    def request_retrain(self, experts: Sequence[str] | None = None) -> RetrainRequest:
        """Start a retraining run now (``/retrain``); refused while one is running or requested."""
        state = self.states.get(RETRAIN)
        if state is None or not self.scheduler.running:
            return "unavailable"
        if state.running or self._manual is not None:
            return "running"
        self._manual = _Manual(list(experts) if experts else None)
        self._idle_event(RETRAIN).clear()
        self.run_now(RETRAIN)
        return "started"

    def job_states(self) -> list[JobState]:
        """Copies of every job's state with its next run time."""
        out = []
        for job_id, state in self.states.items():
            job = self.scheduler.get_job(job_id)
            out.append(replace(state, next_run=job.next_run_time if job is not None else None))
        return out

    # ------------------------------------------------------------------------------------ jobs

    async def _warm_up(self) -> str:
        assert self._warm_up_fn is not None
        await _call(self._warm_up_fn)
        return "ok"

    async def _retrain(self) -> str:
        assert self._retrain_fn is not None
        manual, self._manual = self._manual, None
        trigger = "manual" if manual is not None else "nightly"
        experts = manual.experts if manual is not None else None
        store = self.store
        examples: list[dict] = await store.export_training_examples() if store is not None else []
        if manual is None:
            new = await self._new_examples(examples)
            minimum = self.settings.training.min_new_feedback
            if new < minimum:
                return f"skipped: {new} new feedback examples (fewer than {minimum})"
        run_id = (
            await store.runs.start(experts, trigger, examples=len(examples)) if store is not None else None
        )
        try:
            report = await asyncio.to_thread(self._retrain_fn, self.settings, experts, examples)
        except BaseException as exc:
            if run_id is not None:
                status = "interrupted" if isinstance(exc, asyncio.CancelledError) else "failed"
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        store.runs.finish(run_id, status, {"error": f"{type(exc).__name__}: {exc}"})
                    )
            raise
        summary = report_summary(report)
        status = run_status(summary)
        if run_id is not None:
            await store.runs.finish(run_id, status, summary)
        if status == "promoted" and self._after_retrain is not None:
            await _call(self._after_retrain, report)  # e.g. the engine reloads the promoted adapters
        return f"{status} ({trigger}, {len(examples)} feedback examples)"

    async def _new_examples(self, examples: list[dict]) -> int:
        """Feedback examples voted on since the last completed run started."""
        if self.store is None:
            return 0
        last = await self.store.runs.last(finished=True)
        if last is None:
            return len(examples)
        return len(await self.store.export_training_examples(since=last.started))


async def build_scheduler(settings: Settings, engine: Engine, store: FeedbackStore | None) -> JobScheduler:
    """The bot's scheduler, started (``hexcore bot``): warm-up through ``engine.warm_up`` when the engine
    has one, promoted adapters reloaded through ``engine.reload_adapters`` when it has one."""
    scheduler = JobScheduler(
        settings,
        store,
        warm_up=getattr(engine, "warm_up", None),
        after_retrain=getattr(engine, "reload_adapters", None),
    )
    scheduler.start()
    return scheduler
