"""Where the answer text is generated: the seam between the pipeline and a generation backend.

The pipeline (route -> retrieve -> assemble) always runs in-process; only the last step, turning chat
messages into text, can move to another machine. A :class:`GenerationBackend` is that last step, called
from the engine's worker thread: ``stream`` yields text deltas as they arrive and stops early once
``cancel_event`` is set. The in-process transformers path (``engine.generation.Generator``) stays the
engine's own batched runner; a backend is the alternative it switches to when
``settings.engine.backend == "remote"`` (:func:`create_backend`).

A remote server batches continuously across *all* its clients, so the worker thread must not send a
batch's requests one after another: :func:`run_calls` streams a batch's calls concurrently, one thread
each, and reports every call's outcome without letting one failure touch the others.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from engine.backend_types import BackendHealth, Message
from engine.errors import BackendConfigError, EngineError, GenerationError

if TYPE_CHECKING:
    from hexcore.settings import EngineSettings, Settings

__all__ = [
    "BACKENDS",
    "BackendCall",
    "BackendHealth",
    "CallOutcome",
    "GenerationBackend",
    "Message",
    "backend_kind",
    "create_backend",
    "run_calls",
]

BACKENDS = ("local", "remote")


@runtime_checkable
class GenerationBackend(Protocol):
    """Generates an answer's text from chat messages. Thread-safe: several worker threads may stream at once."""

    name: str

    def stream(
        self,
        messages: Sequence[Message],
        expert: str | None,
        max_new_tokens: int,
        cancel_event: threading.Event,
    ) -> Iterator[str]:
        """Yield text deltas; raise ``engine.errors`` types. Returns quietly (no error) once cancelled.

        ``expert`` selects the expert's adapter (None: the base model). Closing the iterator early also
        stops the generation.
        """
        ...

    def health(self) -> BackendHealth:
        """Ask the server what it serves (network I/O: call it from a thread, not the event loop)."""
        ...

    def close(self) -> None: ...


def backend_kind(settings: EngineSettings) -> str:
    """``local`` or ``remote``, validated against what the rest of the settings say."""
    kind = settings.backend.strip().lower()
    if kind not in BACKENDS:
        raise BackendConfigError(
            f"unknown engine backend {settings.backend!r}; set HEXCORE_ENGINE_BACKEND to local or remote"
        )
    if kind == "remote" and not settings.remote_url:
        raise BackendConfigError(
            "HEXCORE_ENGINE_BACKEND=remote needs HEXCORE_ENGINE_REMOTE_URL, "
            "e.g. http://gpu-host:8000/v1 (an OpenAI-compatible server such as vLLM)"
        )
    return kind


def create_backend(settings: Settings | EngineSettings) -> GenerationBackend | None:
    """The configured remote backend, or None for ``local`` (the engine runs its own model)."""
    engine = getattr(settings, "engine", settings)
    if backend_kind(engine) == "local":
        return None
    from engine.remote import RemoteBackend

    return RemoteBackend.from_settings(engine)


# ---- running a worker batch through a backend ------------------------------------------------------


@dataclass(slots=True)
class BackendCall:
    """One request of a batch: what to send, and where each delta goes (``on_delta`` runs in a call thread)."""

    messages: Sequence[Message]
    expert: str | None
    max_new_tokens: int
    cancel_event: threading.Event
    on_delta: Callable[[str], None]


@dataclass(slots=True)
class CallOutcome:
    text: str = ""
    """Everything streamed, joined."""
    deltas: int = 0
    """Number of text deltas (about one per token for vLLM and llama.cpp)."""
    error: EngineError | None = None
    cancelled: bool = False
    ttft_ms: float | None = None
    """From the start of the call to the first delta."""
    total_ms: float = 0.0


def _run_one(backend: GenerationBackend, call: BackendCall) -> CallOutcome:
    outcome, parts = CallOutcome(), []
    started = time.perf_counter()
    try:
        for text in backend.stream(call.messages, call.expert, call.max_new_tokens, call.cancel_event):
            if outcome.ttft_ms is None:
                outcome.ttft_ms = (time.perf_counter() - started) * 1000
            parts.append(text)
            outcome.deltas += 1
            call.on_delta(text)
    except EngineError as exc:
        outcome.error = exc
    except Exception as exc:  # a bug in a backend must fail one request, not the worker
        outcome.error = GenerationError(f"generation backend failed: {type(exc).__name__}: {exc}")
        outcome.error.__cause__ = exc
    outcome.text = "".join(parts)
    outcome.cancelled = call.cancel_event.is_set()
    outcome.total_ms = (time.perf_counter() - started) * 1000
    return outcome


def run_calls(backend: GenerationBackend, calls: Sequence[BackendCall]) -> list[CallOutcome]:
    """Stream every call concurrently and return their outcomes in order. Never raises for one call's error.

    Blocks until all calls end (finished, failed or cancelled), so a worker ``Runner.run`` can call it
    and then settle each item from its outcome.
    """
    if len(calls) <= 1:
        return [_run_one(backend, call) for call in calls]
    with concurrent.futures.ThreadPoolExecutor(len(calls), thread_name_prefix="hexcore-remote") as pool:
        futures = [pool.submit(_run_one, backend, call) for call in calls]
        return [future.result() for future in futures]
