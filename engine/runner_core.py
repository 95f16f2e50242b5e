"""What every runner does around generation: prepare each request, stream its text, settle its answer.

The local runner (``engine.runner.BatchRunner``: the model in this process) and the remote one
(``engine.remote_runner.RemoteRunner``: an OpenAI-compatible server) differ only in how text is generated.
Both hand their requests to one :class:`RunnerCore`, which reads top-down:

1. :meth:`RunnerCore.prepare` -- the pipeline's route -> plan experts -> calculator or retrieve -> lead ->
   assemble -> prompt (``engine.pipeline``). A request answered without the model (the calculator's verdict,
   or no relevant rule) is settled at once; the others get ``LeadFound`` (the user reads the deciding rule while
   the model writes) and go back to the runner to generate.
2. The runner generates, feeding each delta to the turn's :class:`TurnStream` (the grounding guard).
3. :meth:`RunnerCore.settle` -- guard -> support check and answer (``AnswerPipeline.finish``) -> the
   conversation keeps the turn -> the request record -> the consumer gets the answer.

Each request is settled on its own ``WorkItem``: a failure in one (a typed engine error, a retrieval failure,
or a bug) fails that request with a clear error and never the others or the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from engine.api import Expert, LeadFound, TokenDelta
from engine.errors import EngineError, GenerationError, RequestCancelled
from engine.experts import Planner
from engine.grounding import StreamGuard
from engine.pipeline import AnswerPipeline, RequestRecord, Turn
from engine.prompts import next_history
from engine.streaming import WorkItem
from knowledge.errors import KnowledgeError

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine.conversations import ConversationStore
    from engine.sessions import SessionStore

log = logging.getLogger(__name__)


class EngineRunner(Protocol):
    """What ``LocalEngine`` asks of its runner, local or remote (and the worker's ``Runner``: ``run``)."""

    @property
    def pipeline(self) -> AnswerPipeline: ...

    @property
    def kv_sessions(self) -> SessionStore | None:
        """The conversations' KV caches, when this runner keeps any."""
        ...

    def run(self, items: list[WorkItem]) -> None: ...

    def serving_versions(self) -> dict[str, str]: ...

    def reload_adapters(self) -> dict[Expert, str]: ...

    def adapter_stats(self) -> dict[str, Any] | None: ...

    def end_session(self, session_id: str) -> None:
        """Forget what this runner keeps of a conversation (``RunnerCore.end_session``, and its own)."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Generated:
    """What a runner generated for one turn (and what it cost)."""

    text: str
    """Exactly what was generated after the turn's opening: the conversation keeps it, token for token."""
    finish_reason: str
    """``stop``, ``length``, ``repetition``, ``cancelled``; ``calculator``/``not_found`` when nothing ran."""
    shown: str | None = None
    """What the user gets instead of ``text`` (a looping answer without its loop); None: ``text``."""
    prefill_ms: float = 0.0
    generate_ms: float = 0.0
    adapters: tuple[str, ...] = ()
    fused: bool = False
    prompt_tokens: int = 0
    reused_tokens: int = 0
    new_tokens: int = 0
    batch_size: int = 0

    @classmethod
    def without_model(cls, turn: Turn) -> Generated:
        """A turn answered without generating: the calculator's, or one with nothing relevant to quote."""
        return cls(turn.fixed_text, "calculator" if turn.calculated is not None else "not_found")


class TurnStream:
    """One turn's streamed text: every delta goes through the grounding guard to the request's consumer."""

    __slots__ = ("item", "guard")

    def __init__(self, item: WorkItem, turn: Turn) -> None:
        self.item = item
        self.guard = StreamGuard(turn.allowed_rules)

    def feed(self, delta: str) -> None:
        out = self.guard.feed(delta)
        if out:
            self.item.emit(TokenDelta(out))

    def close(self) -> None:
        """Emit what the guard still holds back (a rule number it was waiting to see the end of)."""
        tail = self.guard.finish()
        if tail:
            self.item.emit(TokenDelta(tail))


@dataclass(slots=True)
class Prepared:
    """A request ready to generate."""

    item: WorkItem
    turn: Turn
    stream: TurnStream


class RunnerCore:
    """The answer path shared by the local and remote runners (see the module docstring)."""

    def __init__(
        self,
        pipeline: AnswerPipeline,
        conversations: ConversationStore,
        planner: Planner,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.conversations = conversations
        self.planner = planner
        self.on_record = on_record

    def prepare(self, items: list[WorkItem]) -> list[Prepared]:
        """The items that need the model, prepared; every other item is settled (or left cancelled)."""
        return [p for p in map(self._prepare_one, items) if p is not None]

    def _prepare_one(self, item: WorkItem) -> Prepared | None:
        if item.cancelled:
            return None  # the worker settles it as cancelled
        with failing(item, "preparing the answer"):
            request, submitted_at = item.payload.request, item.payload.submitted_at
            clock = time.perf_counter()
            timings = {"queue": (clock - submitted_at) * 1000}
            history = self.conversations.get(request.session_id)  # a SQLite read for the bot's threads
            timings["history"] = (time.perf_counter() - clock) * 1000
            turn = self.pipeline.prepare(request, history, submitted_at, self.planner, timings)
            prepared = Prepared(item, turn, TurnStream(item, turn))
            if not turn.generates:  # the calculator answered, or nothing relevant was found: no model needed
                self.settle(prepared, Generated.without_model(turn))
                return None
            item.emit(LeadFound(turn.lead))  # what the user reads first, while the model writes
            return prepared
        return None

    def end_session(self, session_id: str) -> None:
        """Forget the conversation's calculator scenario (its history is the caller's store to end)."""
        self.pipeline.scenarios.end(session_id)

    def settle(self, prepared: Prepared, generated: Generated) -> None:
        """Answer the request: the guard's tail, then the checked answer; the conversation keeps the raw text."""
        item, turn = prepared.item, prepared.turn
        with failing(item, "building the answer"):
            prepared.stream.close()
            if item.cancelled or generated.finish_reason == "cancelled":
                item.fail(RequestCancelled("cancelled"))
                return
            answer = self.pipeline.finish(
                turn,
                generated.text if generated.shown is None else generated.shown,
                prefill_ms=generated.prefill_ms,
                generate_ms=generated.generate_ms,
                generated_tokens=generated.new_tokens,
            )
            if turn.request.session_id is not None:
                # The raw text, not the guarded one: the next prompt must repeat exactly what was generated
                # for a KV-cache session to match it token for token.
                history = next_history(turn.messages, turn.opening + generated.text)
                self.conversations.put(turn.request.session_id, history)
            if self.on_record is not None:
                self.on_record(_record(turn, generated, answer.timings_ms))
            item.finish(answer)


@contextmanager
def failing(item: WorkItem, doing: str) -> Iterator[None]:
    """Fail ``item`` (only it) with a typed engine error when the block raises: engine errors as they are, a
    retrieval failure or a bug as ``GenerationError`` saying what was being done."""
    try:
        yield
    except EngineError as exc:
        item.fail(exc)
    except KnowledgeError as exc:
        item.fail(GenerationError(f"retrieval failed: {exc}"))
    except Exception as exc:  # a bug in one request must not take the batch (or the worker) down
        log.exception("%s failed", doing)
        error = GenerationError(f"{doing} failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        item.fail(error)


def _record(turn: Turn, generated: Generated, timings_ms: dict[str, float]) -> RequestRecord:
    return RequestRecord(
        question=turn.request.question,
        experts=[e.value for e in turn.experts],
        adapters=list(generated.adapters),
        fused=generated.fused,
        prompt_tokens=generated.prompt_tokens,
        reused_tokens=generated.reused_tokens,
        new_tokens=generated.new_tokens,
        batch_size=generated.batch_size,
        finish_reason=generated.finish_reason,
        timings_ms=timings_ms,
    )
