"""The local engine worker's runner: prepares a batch of requests and generates their answers together.

:class:`BatchRunner` is built in the worker thread (``engine.worker``) by ``LocalEngine``. For each request it
routes and retrieves (``engine.pipeline.AnswerPipeline``), then runs every one-expert turn in one mixed-adapter
generator batch (``engine.generation``; requests arriving meanwhile may join it, see ``admit_mid_batch``) and
each several-expert turn as one fused generation (``engine.fusion``). Each answer is settled on its own
``WorkItem``: a failure in one request never fails the others.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from engine.api import AnswerRequest, Expert, LeadFound, TokenDelta
from engine.errors import AdapterError, EngineError, GenerationError, RequestCancelled
from engine.grounding import StreamGuard
from engine.pipeline import AnswerPipeline, RequestRecord, Turn
from engine.prompts import next_history
from knowledge.errors import KnowledgeError

if TYPE_CHECKING:
    from engine.streaming import WorkItem
    from engine.worker import Admit

log = logging.getLogger(__name__)


def load_fusion(state_dir: Any, loaded: Any) -> Any:
    """The promoted fusion (``<state_dir>/fusion/serving.json``) when there is one, else an untrained
    one (= the experts' average)."""
    from engine.fusion import FUSION_CONFIG, CrossExpertAttention, fusion_root, serving_fusion_dir

    path = serving_fusion_dir(fusion_root(state_dir))
    hidden = int(loaded.model.config.get_text_config().hidden_size)
    if path is not None and (path / FUSION_CONFIG).is_file():
        try:
            fusion = CrossExpertAttention.load(path, device=loaded.device)
            if fusion.hidden_size == hidden:
                return fusion.eval()
            log.warning(
                "the fusion in %s is for hidden size %d, not %d: ignored", path, fusion.hidden_size, hidden
            )
        except Exception:
            log.exception("loading the fusion from %s failed; averaging the experts instead", path)
    return CrossExpertAttention(hidden).to(loaded.device).eval()


class BatchRunner:
    """The engine worker's runner: prepare each request of a batch, generate them together, answer each.

    One-expert turns decode together in one mixed-adapter generator batch; a turn with several experts runs
    as one fused generation after them. Built in the worker thread by ``LocalEngine``'s runner factory.
    """

    def __init__(
        self,
        pipeline: AnswerPipeline,
        loaded: Any,
        registry: Any,
        sessions: Any,
        fusion: Any,
        conversations: Any,
        *,
        batch_size: int,
        stop_on_repeat: int = 0,
        admit_mid_batch: bool = False,
        preload_adapters: bool = True,
        before_generate: Callable[[list[AnswerRequest]], None] | None = None,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.conversations = conversations
        self.before_generate = before_generate
        self.on_record = on_record
        self.loaded = loaded
        self.registry = registry
        self.sessions = sessions
        self.fusion = fusion
        self.batch_size = batch_size
        self.stop_on_repeat = stop_on_repeat
        self.admit_mid_batch = admit_mid_batch
        """Take queued requests into a running generator batch (the worker's ``admit``)."""
        self.unavailable: dict[Expert, str] = {}
        """Experts whose adapter failed to register, with the reason."""
        if preload_adapters:
            for expert, error in registry.register_serving().items():
                log.warning("expert %s is unavailable: %s", expert.value, error)
                self.unavailable[expert] = str(error)
        self.generator = self._make_generator()

    def _make_generator(self) -> Any:
        from engine.generation import Generator

        return Generator(
            self.registry.model, self.loaded.tokenizer, self.sessions, max_batch_size=self.batch_size
        )

    def reload_adapters(self) -> dict[Expert, str]:
        """Serve every expert's current serving version (a newly promoted one is hot-swapped in)."""
        failures = self.registry.register_serving()
        self.unavailable = {expert: str(error) for expert, error in failures.items()}
        if self.generator.model is not self.registry.model:
            self.generator = self._make_generator()
        return dict(self.unavailable)

    def close(self) -> None:
        self.sessions.clear()

    def run(self, items: list[WorkItem], *, admit: Admit | None = None) -> None:
        """Answer ``items``; with ``admit`` (and ``admit_mid_batch``), requests queued meanwhile join the
        running generator batch."""
        if not self.admit_mid_batch:
            admit = None
        prepared = [p for p in map(self._prepare_item, items) if p is not None]
        if self.before_generate is not None and prepared:
            self.before_generate([turn.request for _, turn, _ in prepared])
        singles = [p for p in prepared if len(p[2]) == 1]
        fused = [p for p in prepared if len(p[2]) > 1]
        if singles:
            self._run_batch(singles, admit, fused)
        for item, turn, adapters in fused:
            self._run_fused(item, turn, adapters)

    def _prepare_item(self, item: WorkItem) -> tuple[WorkItem, Turn, list[Expert | None]] | None:
        """Route and retrieve for one request; None (the item settled, or cancelled) when it cannot run."""
        if item.cancelled:
            return None  # the worker settles it as cancelled
        try:
            turn, adapters = self._prepare(item.payload)
        except EngineError as exc:
            item.fail(exc)
            return None
        except KnowledgeError as exc:
            item.fail(GenerationError(f"retrieval failed: {exc}"))
            return None
        except Exception as exc:  # a bug in one request's preparation must not take the batch down
            log.exception("preparing a request failed")
            error = GenerationError(f"preparing the answer failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            item.fail(error)
            return None
        if not turn.generates:  # the calculator answered, or nothing relevant was found: no model needed
            record = _record_without_generation(turn)
            self._settle(
                item,
                turn,
                StreamGuard(turn.allowed_rules),
                turn.fixed_text,
                prefill_ms=0.0,
                generate_ms=0.0,
                record=record,
            )
            return None
        item.emit(LeadFound(turn.lead))  # what the user reads first, while the model writes
        return item, turn, adapters

    def _prepare(self, payload: Any) -> tuple[Turn, list[Expert | None]]:
        request = payload.request
        queue_ms = (time.perf_counter() - payload.submitted_at) * 1000
        routing = self.pipeline.route(request)
        started = time.perf_counter()
        self._ensure_adapters(routing.experts)
        adapters_ms = (time.perf_counter() - started) * 1000
        served = {Expert(e) for e in self.registry.serving_versions()}
        history = self.conversations.get(request.session_id)
        turn = self.pipeline.prepare(
            request, history, payload.submitted_at, available=served, routing=routing
        )
        turn.timings_ms["queue"] = queue_ms
        turn.timings_ms["adapters"] = adapters_ms
        adapters: list[Expert | None] = [e if e in served else None for e in turn.experts]
        if len(adapters) > 1 and (self.registry.peft_model is None or None in adapters):
            adapters = adapters[:1]  # fusion needs every expert's adapter; else the best one answers
        return turn, adapters

    def _ensure_adapters(self, experts: Sequence[Expert]) -> None:
        """Register (load and validate) the experts' adapters not tried yet: all at start, or on first use
        with ``preload_adapters=False``. A failure is remembered, not retried, until ``reload_adapters``."""
        served = self.registry.serving_versions()
        for expert in experts:
            if expert.value in served or expert in self.unavailable:
                continue
            try:
                self.registry.register(expert)
            except AdapterError as exc:
                log.warning("expert %s is unavailable: %s", expert.value, exc)
                self.unavailable[expert] = str(exc)
        if self.generator.model is not self.registry.model:  # the first adapter wrapped the model in peft
            self.generator = self._make_generator()

    # ---- one-expert requests: one mixed-adapter batch ----

    def _run_batch(
        self,
        batch: list[tuple[WorkItem, Turn, list[Expert | None]]],
        admit: Admit | None = None,
        fused: list[tuple[WorkItem, Turn, list[Expert | None]]] | None = None,
    ) -> None:
        """One mixed-adapter generator batch. With ``admit``, newly queued one-expert requests join it between
        decode steps (each holding its adapter until the batch ends); several-expert ones go to ``fused``."""
        from engine.generation import GenJob

        with contextlib.ExitStack() as stack:

            def jobs_for(prepared: list[tuple[WorkItem, Turn, list[Expert | None]]]) -> list[Any]:
                jobs = []
                for item, turn, adapters in prepared:
                    try:
                        (name,) = stack.enter_context(self.registry.use(adapters[:1]))
                    except AdapterError as exc:  # vanished since _prepare (a failed swap): this request only
                        item.fail(exc)
                        continue
                    jobs.append(self._job(GenJob, item, turn, name))
                return jobs

            generator = self.generator
            later: list[tuple[WorkItem, Turn, list[Expert | None]]] = []

            def more(free: int) -> list[Any]:
                prepared = [p for p in map(self._prepare_item, admit(free)) if p is not None]  # type: ignore[misc]
                if self.before_generate is not None and prepared:
                    self.before_generate([turn.request for _, turn, _ in prepared])
                if fused is not None:
                    fused.extend(p for p in prepared if len(p[2]) > 1)
                singles = [p for p in prepared if len(p[2]) == 1]
                if self.generator is not generator:  # a first adapter wrapped the model: next batch
                    later.extend(singles)
                    return []
                return jobs_for(singles)

            jobs = jobs_for(batch)
            if jobs or admit is not None:
                generator.run_batch(jobs, admit=more if admit is not None else None)
        if later:
            self._run_batch(later, admit, fused)

    def _job(self, job_type: Any, item: WorkItem, turn: Turn, adapter: str) -> Any:
        from engine.generation import cut_repeated_tail, decode_text

        guard = StreamGuard(turn.allowed_rules)
        pieces: list[str] = []

        def on_token(delta: str) -> None:
            pieces.append(delta)
            out = guard.feed(delta)
            if out:
                item.emit(TokenDelta(out))

        def on_done(ids: list[int], stats: Any) -> None:
            shown = None
            if stats.finish_reason == "repetition":  # the answer looped: show it without the loop
                repeated = decode_text(self.loaded.tokenizer, ids[-self.stop_on_repeat :])
                shown = cut_repeated_tail("".join(pieces), repeated)
            self._settle(
                item,
                turn,
                guard,
                "".join(pieces),
                shown=shown,
                prefill_ms=stats.prefill_ms,
                generate_ms=stats.decode_ms,
                record={
                    "adapters": [adapter],
                    "fused": False,
                    "prompt_tokens": stats.prompt_tokens,
                    "reused_tokens": stats.reused_tokens,
                    "new_tokens": stats.new_tokens,
                    "batch_size": stats.batch_size,
                    "finish_reason": stats.finish_reason,
                },
            )

        return job_type(
            input_ids=turn.input_ids,
            adapter_name=adapter,
            max_new_tokens=turn.max_new_tokens,
            session_id=turn.request.session_id,
            on_token=on_token,
            on_done=on_done,
            on_error=item.fail,
            is_cancelled=item.cancel_event.is_set,
            submitted_at=turn.submitted_at,
            stop_on_repeat=self.stop_on_repeat,
        )

    # ---- several experts: cross-expert attention ----

    def _run_fused(self, item: WorkItem, turn: Turn, experts: list[Expert | None]) -> None:
        import torch

        from engine.fusion import generate_fused
        from engine.generation import IncrementalDetokenizer, cut_repeated_tail, decode_text

        tokenizer = self.loaded.tokenizer
        eos = self.generator.default_eos
        detok = IncrementalDetokenizer(tokenizer)
        guard = StreamGuard(turn.allowed_rules)
        started = time.perf_counter()
        marks: list[float] = []
        ended = looped = False
        n = self.stop_on_repeat
        seen: set[tuple[int, ...]] = set()

        def on_token(tokens: Any) -> bool:
            nonlocal ended, looped
            marks.append(time.perf_counter())
            token = int(tokens[0])
            if ended or token in eos:
                ended = True
                return False
            delta = detok.push(token)
            out = guard.feed(delta) if delta else ""
            if out:
                item.emit(TokenDelta(out))
            if n and len(detok.ids) >= n:  # the same loop stop as the batched path (GenJob.stop_on_repeat)
                gram = tuple(detok.ids[-n:])
                if gram in seen:
                    looped = True
                    return False
                seen.add(gram)
            return not item.cancelled

        with contextlib.ExitStack() as stack:
            try:
                names = stack.enter_context(self.registry.use(experts))
            except AdapterError as exc:
                item.fail(exc)
                return
            ids = torch.tensor([turn.input_ids], device=self.loaded.device)
            try:
                generate_fused(
                    self.registry.peft_model,
                    ids,
                    torch.ones_like(ids),
                    names,
                    self.fusion,
                    max_new_tokens=turn.max_new_tokens,
                    eos_token_id=sorted(eos),
                    pad_token_id=tokenizer.pad_token_id,
                    on_token=on_token,
                    experts=experts,
                )
            except Exception as exc:
                item.fail(GenerationError(f"fused generation failed: {type(exc).__name__}: {exc}"))
                raise  # like a failed decode step of a batch: the model may be in a bad state
        tail = detok.finish()
        if tail:
            out = guard.feed(tail)
            if out:
                item.emit(TokenDelta(out))
        if item.cancelled:
            item.fail(RequestCancelled("cancelled"))
            return
        first, last = (marks[0], marks[-1]) if marks else (started, started)
        new_tokens = len(detok.ids)
        reason = "stop" if ended else ("length" if new_tokens >= turn.max_new_tokens else "cancelled")
        shown = None
        if looped:
            reason = "repetition"
            shown = cut_repeated_tail(detok.text, decode_text(tokenizer, detok.ids[-n:]))
        self._settle(
            item,
            turn,
            guard,
            detok.text,
            shown=shown,
            prefill_ms=(first - started) * 1000,
            generate_ms=(last - first) * 1000,
            record={
                "adapters": list(names),
                "fused": True,
                "prompt_tokens": len(turn.input_ids),
                "reused_tokens": 0,
                "new_tokens": new_tokens,
                "batch_size": len(experts),
                "finish_reason": reason,
            },
        )

    # ---- the answer ----

    def _settle(
        self,
        item: WorkItem,
        turn: Turn,
        guard: StreamGuard,
        text: str,
        *,
        prefill_ms: float,
        generate_ms: float,
        record: dict[str, Any],
        shown: str | None = None,
    ) -> None:
        """Answer the request. ``text`` is exactly what was generated (the conversation keeps it, token for
        token, to match its KV cache); ``shown``, when given, is what the user gets instead."""
        try:
            tail = guard.finish()
            if tail:
                item.emit(TokenDelta(tail))
            if item.cancelled or record["finish_reason"] == "cancelled":
                item.fail(RequestCancelled("cancelled"))
                return
            answer = self.pipeline.finish(
                turn,
                text if shown is None else shown,
                prefill_ms=prefill_ms,
                generate_ms=generate_ms,
                generated_tokens=record["new_tokens"],
            )
            if turn.request.session_id is not None:
                # The raw text, not the guarded one: the next prompt must repeat exactly what was generated
                # for the KV-cache session to match it token for token.
                self.conversations.put(
                    turn.request.session_id, next_history(turn.messages, turn.opening + text)
                )
            if self.on_record is not None:
                self.on_record(
                    RequestRecord(
                        question=turn.request.question,
                        experts=[e.value for e in turn.experts],
                        timings_ms=answer.timings_ms,
                        **record,
                    )
                )
            item.finish(answer)
        except Exception as exc:  # never leave the consumer waiting on a bug here
            log.exception("building the answer failed")
            item.fail(GenerationError(f"building the answer failed: {type(exc).__name__}: {exc}"))


def _record_without_generation(turn: Turn) -> dict[str, Any]:
    """The request record of an answer settled without generating (nothing relevant to quote)."""
    return {
        "adapters": [],
        "fused": False,
        "prompt_tokens": 0,
        "reused_tokens": 0,
        "new_tokens": 0,
        "batch_size": 0,
        "finish_reason": "calculator" if turn.calculated is not None else "not_found",
    }
