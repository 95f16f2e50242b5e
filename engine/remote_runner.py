"""The worker's runner when generation goes to a remote OpenAI-compatible server (vLLM, llama.cpp).

Routing, retrieval, context assembly, the grounding guard and citations run here exactly as for the local
backend (``engine.pipeline.AnswerPipeline``); only the chat messages go to the server, each expert as the
LoRA module of its name. Requests of a batch stream concurrently (``engine.backends.run_calls``), since the
server batches across all its clients. Conversations keep their messages (no local KV cache: the server's
prefix cache reuses the shared prefix). Several experts for one question use the best one: cross-expert
attention needs the experts' hidden states, which an OpenAI-compatible API does not return.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from engine.api import Expert, LeadFound, TokenDelta
from engine.backends import BackendCall, GenerationBackend, run_calls
from engine.errors import EngineError, GenerationError, RequestCancelled
from engine.grounding import StreamGuard
from engine.pipeline import AnswerPipeline, RequestRecord, Turn
from engine.prompts import next_history
from engine.streaming import WorkItem
from knowledge.errors import KnowledgeError

log = logging.getLogger(__name__)


class RemoteRunner:
    def __init__(
        self,
        pipeline: AnswerPipeline,
        backend: GenerationBackend,
        conversations: Any,
        *,
        on_record: Any = None,
    ) -> None:
        self.pipeline = pipeline
        self.backend = backend
        self.conversations = conversations
        self.on_record = on_record
        self.served: dict[str, str] = {}
        self._refresh_served()

    def _refresh_served(self) -> None:
        health = self.backend.health()
        if health.ok:
            self.served = dict(health.experts)
        else:
            log.warning("remote generation server unavailable at start: %s", health.error)

    def serving_versions(self) -> dict[str, str]:
        return {expert: f"remote:{name}" for expert, name in self.served.items()}

    def reload_adapters(self) -> dict[Expert, str]:
        """The server owns the adapters: re-export them and restart it (``hexcore adapters export``)."""
        log.info("remote backend: re-export the adapters and restart the server to serve new versions")
        self._refresh_served()
        return {}

    def close(self) -> None:
        self.backend.close()

    def run(self, items: list[WorkItem]) -> None:
        prepared: list[tuple[WorkItem, Turn]] = []
        for item in items:
            if item.cancelled:
                continue
            request = item.payload.request
            try:
                history = self.conversations.get(request.session_id)
                turn = self.pipeline.prepare(request, history, item.payload.submitted_at)
            except EngineError as exc:
                item.fail(exc)
                continue
            except KnowledgeError as exc:
                item.fail(GenerationError(f"retrieval failed: {exc}"))
                continue
            if not turn.generates:  # the calculator answered, or nothing relevant was found: no model call
                answer = self.pipeline.finish(turn, "", prefill_ms=0.0, generate_ms=0.0, generated_tokens=0)
                if request.session_id is not None:
                    self.conversations.put(request.session_id, next_history(turn.messages, turn.fixed_text))
                item.finish(answer)
                continue
            item.emit(LeadFound(turn.lead))  # what the user reads first, while the server writes
            prepared.append((item, turn))
        if not prepared:
            return
        guards = [StreamGuard(turn.allowed_rules) for _, turn in prepared]
        calls = [
            BackendCall(
                messages=turn.messages,
                expert=turn.experts[0].value if turn.experts else None,
                max_new_tokens=turn.max_new_tokens,
                cancel_event=item.cancel_event,
                on_delta=self._emitter(item, guard),
            )
            for (item, turn), guard in zip(prepared, guards, strict=True)
        ]
        started = time.perf_counter()
        outcomes = run_calls(self.backend, calls)
        for (item, turn), guard, outcome in zip(prepared, guards, outcomes, strict=True):
            self._settle(item, turn, guard, outcome, started)

    @staticmethod
    def _emitter(item: WorkItem, guard: StreamGuard):
        def emit(delta: str) -> None:
            out = guard.feed(delta)
            if out:
                item.emit(TokenDelta(out))

        return emit

    def _settle(self, item: WorkItem, turn: Turn, guard: StreamGuard, outcome: Any, started: float) -> None:
        if outcome.error is not None:
            item.fail(outcome.error)
            return
        if outcome.cancelled or item.cancelled:
            item.fail(RequestCancelled("cancelled"))
            return
        tail = guard.finish()
        if tail:
            item.emit(TokenDelta(tail))
        answer = self.pipeline.finish(
            turn,
            outcome.text,
            prefill_ms=outcome.ttft_ms or 0.0,
            generate_ms=outcome.total_ms,
            generated_tokens=outcome.deltas,
        )
        if turn.request.session_id is not None:
            self.conversations.put(
                turn.request.session_id, next_history(turn.messages, turn.opening + outcome.text)
            )
        if self.on_record is not None:
            self.on_record(_record(turn, answer))
        item.finish(answer)


def _record(turn: Turn, answer: Any) -> RequestRecord:
    return RequestRecord(
        question=turn.request.question,
        experts=[e.value for e in turn.experts],
        adapters=[f"remote:{e.value}" for e in turn.experts[:1]],
        fused=False,
        prompt_tokens=len(turn.input_ids),
        reused_tokens=0,
        new_tokens=answer.generated_tokens,
        batch_size=1,
        finish_reason="stop",
        timings_ms=answer.timings_ms,
    )
