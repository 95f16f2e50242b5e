"""The job scheduler with the REAL AsyncIOScheduler: jobs run through ``run_now`` (a due time set to now),
timestamps come from a fake clock, and the nightly trigger is evaluated at chosen "now"s."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.scheduler import (
    RETRAIN,
    WARM_UP,
    JobScheduler,
    build_scheduler,
    expert_results,
    report_summary,
    run_status,
)
from bot.storage import FeedbackStore
from hexcore.settings import Settings, TrainingSettings

UTC = dt.UTC


class FakeClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> dt.datetime:
        return self.now


class Report:
    """What the training pipeline returns (``RetrainReport``): per-expert outcome and ``to_json()``."""

    def __init__(self, experts: dict) -> None:
        self.experts = experts

    def to_json(self) -> dict:
        return {"experts": self.experts}


PROMOTED = {"reason": {"promoted": True, "reason": "validation score up", "metrics": {"score": 0.81}}}


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def train_settings(settings: Settings) -> Settings:
    return Settings(
        paths=settings.paths, training=TrainingSettings(_env_file=None, nightly_hour=3, min_new_feedback=2)
    )


@pytest.fixture
async def store(tmp_path: Path):
    s = await FeedbackStore.open(tmp_path / "feedback.sqlite3")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def make(train_settings, store, fake_clock):
    made: list[JobScheduler] = []

    def factory(**kwargs) -> JobScheduler:
        kwargs.setdefault("retrain", None)
        kwargs.setdefault("clock", fake_clock)
        kwargs.setdefault("timezone", "UTC")
        sched = JobScheduler(train_settings, kwargs.pop("store", store), **kwargs)
        made.append(sched)
        return sched

    yield factory
    for sched in made:
        await sched.close()


async def voted_answers(store: FeedbackStore, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await store.answers.record(f"a{i}", 1, 2, 3, "ask", f"q{i}?", f"answer {i}", ["reason"], [])
        await store.votes.record(f"a{i}", 4, 1, "button")


def test_jobs_are_configured_for_misfires_and_overlap(make):
    sched = make(retrain=lambda *a: None, warm_up=lambda: None, warm_up_interval_s=600)
    retrain, warm = (sched.scheduler.get_job(j) for j in (RETRAIN, WARM_UP))
    assert (retrain.max_instances, retrain.coalesce, retrain.misfire_grace_time) == (1, True, 3600)
    assert (warm.max_instances, warm.coalesce, warm.misfire_grace_time) == (1, True, 300)
    assert warm.trigger.interval == dt.timedelta(seconds=600)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (dt.datetime(2026, 3, 1, 14, 0, tzinfo=UTC), dt.datetime(2026, 3, 2, 3, 0, tzinfo=UTC)),
        (dt.datetime(2026, 3, 1, 2, 59, tzinfo=UTC), dt.datetime(2026, 3, 1, 3, 0, tzinfo=UTC)),
        (dt.datetime(2026, 12, 31, 3, 0, 1, tzinfo=UTC), dt.datetime(2027, 1, 1, 3, 0, tzinfo=UTC)),
    ],
)
def test_nightly_retraining_fires_at_the_configured_hour(make, now, expected):
    trigger = make(retrain=lambda *a: None).scheduler.get_job(RETRAIN).trigger
    assert trigger.get_next_fire_time(None, now) == expected
    # and after a run at that hour the next one is a day later
    assert trigger.get_next_fire_time(expected, expected) == expected + dt.timedelta(days=1)


async def test_warm_up_runs_at_start_and_periodically(make):
    calls = []

    async def warm_up() -> None:
        calls.append(asyncio.get_running_loop())

    sched = make(warm_up=warm_up, warm_up_interval_s=3600)
    sched.start()
    await until(lambda: calls and not sched.states[WARM_UP].running)
    state = next(s for s in sched.job_states() if s.id == WARM_UP)
    assert state.runs == 1 and state.last_result == "ok"
    assert state.next_run is not None and state.next_run > dt.datetime.now(UTC) + dt.timedelta(minutes=59)


async def test_sync_warm_up_runs_in_a_thread(make):
    threads = []
    sched = make(warm_up=lambda: threads.append(threading.get_ident()))
    sched.start()
    await until(lambda: threads and not sched.states[WARM_UP].running)
    assert threads[0] != threading.get_ident(), "a blocking warm-up never runs on the event loop"


async def test_a_failing_job_is_logged_recorded_and_the_scheduler_keeps_going(make, fake_clock, caplog):
    outcomes = [RuntimeError("index files missing"), None]

    async def warm_up() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    sched = make(warm_up=warm_up)
    with caplog.at_level(logging.ERROR, logger="bot.scheduler"):
        sched.start()
        await sched.wait_idle(WARM_UP, 10)
        await until(lambda: sched.states[WARM_UP].runs == 1 and not sched.states[WARM_UP].running)
    state = sched.states[WARM_UP]
    assert state.failures == 1 and state.last_result == "failed"
    assert state.last_error == "RuntimeError: index files missing" and state.last_error_at == fake_clock.now
    failed = [r for r in caplog.records if r.name == "bot.scheduler" and r.exc_info]
    assert failed and "index files missing" in str(failed[0].exc_info[1])
    assert sched.running
    fake_clock.now += dt.timedelta(hours=1)
    sched.run_now(WARM_UP)
    await until(lambda: state.runs == 2 and not state.running)
    assert state.last_result == "ok" and state.failures == 1, "the error stays visible after a good run"
    assert state.last_finished == fake_clock.now


async def test_retrain_runs_in_a_thread_and_records_its_result(make, store, train_settings):
    await voted_answers(store, 3)
    calls, reloaded = [], []

    def retrain(settings, experts, examples):
        calls.append((settings, experts, examples, threading.get_ident()))
        return Report(PROMOTED)

    sched = make(retrain=retrain, after_retrain=lambda report: reloaded.append(report))
    sched.start()
    assert sched.request_retrain(["reason"]) == "started"
    state = await sched.wait_idle(RETRAIN, 10)
    settings, experts, examples, thread = calls[0]
    assert settings is train_settings and experts == ["reason"] and thread != threading.get_ident()
    assert [e["question"] for e in examples] == ["q0?", "q1?", "q2?"]
    run = await store.runs.last()
    assert (run.status, run.trigger, run.experts, run.examples) == ("promoted", "manual", ["reason"], 3)
    assert run.validation == {"experts": PROMOTED} and run.finished is not None
    assert state.last_result.startswith("promoted") and len(reloaded) == 1


async def test_a_second_run_is_refused_while_one_is_running(make, store):
    release = threading.Event()
    started = threading.Event()

    def retrain(settings, experts, examples):
        started.set()
        release.wait(30)
        return Report({"reason": {"promoted": False, "reason": "not better"}})

    sched = make(retrain=retrain)
    sched.start()
    try:
        assert sched.request_retrain() == "started"
        assert sched.request_retrain() == "running", "a request before it even started is refused"
        await until(started.is_set)
        assert sched.request_retrain(["teach"]) == "running"
        sched.run_now(RETRAIN)  # the nightly trigger firing now: APScheduler's max_instances refuses it
        await until(lambda: sched.states[RETRAIN].skipped == 1)
        assert "still going" in sched.states[RETRAIN].last_skip
        assert sched.states[RETRAIN].running and sched.states[RETRAIN].runs == 1
    finally:
        release.set()
    state = await sched.wait_idle(RETRAIN, 10)
    assert state.runs == 1 and state.last_result.startswith("kept")
    assert [r.status for r in await store.runs.recent()] == ["kept"]
    assert sched.request_retrain() == "started", "free again once it finished"
    await sched.wait_idle(RETRAIN, 10)


async def test_nightly_run_waits_for_enough_new_feedback(make, store):
    calls = []
    sched = make(retrain=lambda s, experts, examples: calls.append(list(examples)) or Report(PROMOTED))
    sched.start()
    await voted_answers(store, 1)
    sched.run_now(RETRAIN)  # the nightly trigger
    await until(lambda: sched.states[RETRAIN].runs == 1 and not sched.states[RETRAIN].running)
    assert sched.states[RETRAIN].last_result == "skipped: 1 new feedback examples (fewer than 2)"
    assert calls == [] and await store.runs.last() is None
    await voted_answers(store, 2, start=1)
    sched.run_now(RETRAIN)
    await until(lambda: sched.states[RETRAIN].runs == 2 and not sched.states[RETRAIN].running)
    assert len(calls) == 1 and len(calls[0]) == 3
    assert (await store.runs.last()).trigger == "nightly"
    # only feedback given after the last completed run counts as new
    sched.run_now(RETRAIN)
    await until(lambda: sched.states[RETRAIN].runs == 3 and not sched.states[RETRAIN].running)
    assert sched.states[RETRAIN].last_result.startswith("skipped: 0 new") and len(calls) == 1


async def test_a_failed_retraining_is_recorded_and_the_serving_adapters_stay(make, store, caplog):
    reloaded = []

    def retrain(settings, experts, examples):
        raise RuntimeError("validation set unreadable")

    sched = make(retrain=retrain, after_retrain=lambda r: reloaded.append(r))
    sched.start()
    with caplog.at_level(logging.ERROR, logger="bot.scheduler"):
        assert sched.request_retrain() == "started"
        state = await sched.wait_idle(RETRAIN, 10)
    assert state.failures == 1 and state.last_error == "RuntimeError: validation set unreadable"
    run = await store.runs.last()
    assert run.status == "failed" and run.validation == {"error": "RuntimeError: validation set unreadable"}
    assert reloaded == [] and sched.running
    assert any(r.exc_info for r in caplog.records if r.name == "bot.scheduler")


async def test_missing_training_pipeline_is_a_recorded_failure(make, store, monkeypatch):
    import bot.scheduler as mod

    def missing(settings, experts, examples):
        raise ModuleNotFoundError("No module named 'training.pipeline'")

    monkeypatch.setattr(mod, "default_retrain", missing)
    sched = make(retrain=mod.default_retrain)
    sched.start()
    sched.request_retrain()
    state = await sched.wait_idle(RETRAIN, 10)
    assert "training.pipeline" in state.last_error and (await store.runs.last()).status == "failed"


async def test_missed_runs_are_coalesced_into_one(make):
    calls = []
    sched = make(warm_up=lambda: calls.append(1), warm_up_interval_s=3600)  # grace: 30 min
    now = dt.datetime.now(UTC)
    # four due times piled up (-3h20, -2h20, -1h20, -20min): one run, for the latest
    sched.scheduler.modify_job(WARM_UP, next_run_time=now - dt.timedelta(hours=3, minutes=20))
    sched.start()
    await until(lambda: calls and not sched.states[WARM_UP].running)
    await asyncio.sleep(0.1)
    assert len(calls) == 1 and sched.states[WARM_UP].skipped == 0
    assert sched.scheduler.get_job(WARM_UP).next_run_time > now


async def test_a_run_later_than_its_grace_time_is_dropped(make):
    calls = []
    sched = make(warm_up=lambda: calls.append(1), warm_up_interval_s=3600)  # grace: 30 min
    sched.scheduler.modify_job(WARM_UP, next_run_time=dt.datetime.now(UTC) - dt.timedelta(minutes=45))
    sched.start()
    await until(lambda: sched.states[WARM_UP].skipped == 1)
    assert calls == [] and "missed the run due at" in sched.states[WARM_UP].last_skip
    assert sched.scheduler.get_job(WARM_UP).next_run_time > dt.datetime.now(UTC)


async def test_close_interrupts_a_running_retraining(make, store):
    release, started = threading.Event(), threading.Event()

    def retrain(settings, experts, examples):
        started.set()
        release.wait(30)

    sched = make(retrain=retrain)
    sched.start()
    try:
        sched.request_retrain()
        await until(started.is_set)
        await sched.close()
        assert not sched.running
        assert sched.states[RETRAIN].last_result == "cancelled"
        assert (await store.runs.last()).status == "interrupted"
    finally:
        release.set()


async def test_retrain_unavailable_before_start(make):
    sched = make(retrain=lambda *a: None)
    assert sched.request_retrain() == "unavailable"
    assert make().request_retrain() == "unavailable", "no retraining job configured"


async def test_build_scheduler_wires_the_engine(train_settings, store):
    class Engine:
        warmed = 0

        async def warm_up(self) -> None:
            Engine.warmed += 1

        async def reload_adapters(self, report) -> None: ...

    sched = await build_scheduler(train_settings, Engine(), store)
    try:
        assert sched.running and {s.id for s in sched.job_states()} == {RETRAIN, WARM_UP}
        await until(lambda: Engine.warmed == 1)
    finally:
        await sched.close()


@pytest.mark.parametrize(
    ("report", "status"),
    [
        (Report(PROMOTED), "promoted"),
        ({"experts": [{"expert": "teach", "promoted": False, "reason": "worse"}]}, "kept"),
        ({"reason": {"promoted": False}, "teach": {"promoted": True}}, "promoted"),
        ('{"experts": {"explain": {"promoted": false, "metrics": {"loss": 1.5}}}}', "kept"),
        (None, "finished"),
        (object(), "finished"),
    ],
)
def test_report_summaries(report, status):
    summary = report_summary(report)
    assert run_status(summary) == status
    for result in expert_results(summary):
        assert isinstance(result.metrics, dict)


def test_expert_results_read_metrics():
    (result,) = expert_results({"experts": PROMOTED})
    assert (result.expert, result.promoted, result.reason, result.metrics) == (
        "reason",
        True,
        "validation score up",
        {"score": 0.81},
    )
