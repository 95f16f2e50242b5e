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
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.api import Expert
from engine.backends import BackendCall, CallOutcome, GenerationBackend, run_calls
from engine.errors import RequestCancelled
from engine.experts import ExpertPlan, Routing, plan_experts
from engine.pipeline import AnswerPipeline, RequestRecord
from engine.runner_core import Generated, Prepared, RunnerCore, failing

if TYPE_CHECKING:
    from engine.conversations import ConversationStore
    from engine.streaming import WorkItem

log = logging.getLogger(__name__)


class RemoteRunner:
    """The engine worker's runner when a remote server generates (see the module docstring)."""

    def __init__(
        self,
        pipeline: AnswerPipeline,
        backend: GenerationBackend,
        conversations: ConversationStore,
        *,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.core = RunnerCore(pipeline, conversations, self.plan, on_record)
        self.backend = backend
        self.served: dict[str, str] = {}
        self._refresh_served()

    def _refresh_served(self) -> None:
        health = self.backend.health()
        if health.ok:
            self.served = dict(health.experts)
        else:
            log.warning("remote generation server unavailable at start: %s", health.error)

    # ---- what the engine asks of every runner ----

    @property
    def pipeline(self) -> AnswerPipeline:
        return self.core.pipeline

    @property
    def kv_sessions(self) -> None:
        """None: the server's prefix cache reuses a conversation's shared prefix."""
        return None

    def serving_versions(self) -> dict[str, str]:
        return {expert: f"remote:{name}" for expert, name in self.served.items()}

    def adapter_stats(self) -> None:
        """None: the server owns the adapters."""
        return None

    def reload_adapters(self) -> dict[Expert, str]:
        """The server owns the adapters: re-export them and restart it (``hexcore adapters export``)."""
        log.info("remote backend: re-export the adapters and restart the server to serve new versions")
        self._refresh_served()
        return {}

    def end_session(self, session_id: str) -> None:
        """No KV cache is kept here (the server's prefix cache reuses the shared prefix): only the core's."""
        self.core.end_session(session_id)

    def close(self) -> None:
        self.backend.close()

    # ---- generation ----

    @staticmethod
    def plan(routing: Routing) -> ExpertPlan:
        """The best expert answers: fusing needs the experts' hidden states, which the API does not return."""
        return plan_experts(routing, None, can_fuse=False)

    def run(self, items: list[WorkItem]) -> None:
        prepared = self.core.prepare(items)
        if not prepared:
            return
        calls = [
            BackendCall(
                messages=p.turn.messages,
                expert=p.turn.adapters[0].value if p.turn.adapters[0] is not None else None,
                max_new_tokens=p.turn.max_new_tokens,
                cancel_event=p.item.cancel_event,
                on_delta=p.stream.feed,
            )
            for p in prepared
        ]
        for p, outcome in zip(prepared, run_calls(self.backend, calls), strict=True):
            with failing(p.item, "building the answer"):
                self._settle(p, outcome)

    def _settle(self, prepared: Prepared, outcome: CallOutcome) -> None:
        if outcome.error is not None:
            prepared.item.fail(outcome.error)
            return
        if outcome.cancelled:
            prepared.item.fail(RequestCancelled("cancelled"))
            return
        generated = Generated(
            outcome.text,
            "stop",
            prefill_ms=outcome.ttft_ms or 0.0,
            generate_ms=outcome.total_ms,
            adapters=tuple(f"remote:{e.value}" for e in prepared.turn.experts[:1]),
            prompt_tokens=len(prepared.turn.input_ids),
            new_tokens=outcome.deltas,
            batch_size=1,
        )
        self.core.settle(prepared, generated)
