"""``LocalEngine``: the real :class:`engine.api.Engine`, running everything in-process.

One supervised worker thread (``engine.worker``) owns the model. Its runner factory builds, in that thread,
everything slow: the knowledge base (rules, cards, graph, retrieval index), the router, the base model, the
adapter store (with an untrained ``v0`` per expert on a first run) and the adapter registry, the KV-session
store and the generator. So ``start()`` never blocks the event loop, and neither does a request: routing,
retrieval, prompting and generation all run in the worker thread (``engine.pipeline`` does the first three).

A batch of requests from the worker becomes one generator batch: one-expert requests decode together with
one LoRA adapter per row (mixed-adapter batching); a request routed to several experts runs as one fused
generation (``engine.fusion``: cross-expert attention, a uniform average until a trained fusion is promoted
in ``<state_dir>/fusion``). A request with a ``session_id`` keeps its conversation as chat messages
and its KV cache, so the next turn prefills only the new message.

The knowledge base, router and conversations survive a worker restart (they are not what crashed); the
model, adapters, KV sessions and generator are rebuilt. The batch work itself is a runner
(``engine.runner_core.EngineRunner``): ``engine.runner.BatchRunner`` on the model in-process, or
``engine.remote_runner.RemoteRunner`` on a remote server, both around the one ``RunnerCore``. Lookups
(``rule``, ``card``, ``autocomplete_*``) are dictionary work on the loaded knowledge base and are safe to call
from the event loop.

Threads: on CPU the model uses all cores but one unless ``HEXCORE_ENGINE_THREADS`` says otherwise; two
OpenMP threads competing for two busy cores made decoding several times slower (docs/BENCHMARKS.md, "Ask").
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.api import Answer, AnswerRequest, EngineStatus, Event
from engine.backends import create_backend
from engine.conversations import ConversationStore
from engine.errors import EngineDead, EngineError, GenerationError
from engine.pipeline import AnswerPipeline, RequestRecord, validate_request
from engine.runner import BatchRunner, load_fusion
from engine.runner_core import EngineRunner
from engine.worker import EngineWorker
from knowledge.errors import KnowledgeError

if TYPE_CHECKING:
    from engine.router import Router
    from engine.sessions import SessionStore
    from hexcore.settings import Settings
    from knowledge.base import KnowledgeBase
    from knowledge.models import Card, Rule

log = logging.getLogger(__name__)

WARM_UP_QUESTIONS = ("How does trample work?", "What happens when a creature with deathtouch deals damage?")
LATENCY_WINDOW = 256


@dataclass(slots=True)
class _Payload:
    request: AnswerRequest
    submitted_at: float


class LocalEngine:
    """The in-process engine. ``await start()``, then ``generate``/``ask``; ``await close()`` at the end.

    ``knowledge``: an already loaded knowledge base to use (else one is loaded at start).
    ``progress``: called with one-line progress messages while starting (the CLI prints them on stderr).
    ``before_generate``: a test hook called in the worker thread with each batch's requests right before
    generation; raising from it is a crash of the worker (as a CUDA error would be), blocking holds the batch.
    ``preload_adapters=False`` loads an expert's adapter on its first request instead of all at start (the
    one-shot CLI: loading and validating all five costs seconds it does not need).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        knowledge: KnowledgeBase | None = None,
        progress: Callable[[str], None] | None = None,
        before_generate: Callable[[list[AnswerRequest]], None] | None = None,
        preload_adapters: bool = True,
        restart_backoff: tuple[float, float] = (0.5, 30.0),
        conversations: ConversationStore | None = None,
    ) -> None:
        from hexcore.settings import get_settings

        self.settings = settings or get_settings()
        self._knowledge = knowledge
        self._router: Router | None = None
        self._progress = progress
        self.before_generate = before_generate
        self.preload_adapters = preload_adapters
        engine = self.settings.engine
        if conversations is None:  # in memory; the bot passes one kept in the state dir
            conversations = ConversationStore(engine.max_conversations, engine.conversation_ttl_s)
        self.conversations = conversations
        self._runner: EngineRunner | None = None
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.records: deque[RequestRecord] = deque(maxlen=LATENCY_WINDOW)
        self._worker = EngineWorker(
            self._build_runner,
            queue_size=engine.queue_size,
            batch_size=engine.batch_size,
            restart_backoff=restart_backoff,
        )

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load everything in the worker thread; raises DataMissing / ModelLoadError / EngineDead."""
        try:
            await self._worker.start()
        except (EngineError, KnowledgeError):
            raise
        except Exception as exc:
            raise EngineDead(f"the engine failed to start: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._worker.close()

    async def warm_up(
        self, questions: Sequence[str] = WARM_UP_QUESTIONS, max_new_tokens: int = 16
    ) -> list[Answer]:
        """Start (if needed) and answer a few frequent questions, so caches and kernels are warm."""
        await self.start()
        return [await self.ask(AnswerRequest(q, max_new_tokens=max_new_tokens)) for q in questions]

    async def reload_adapters(self) -> dict[str, str]:
        """Serve each expert's current serving version (after training promoted one); returns the failures.

        Runs in a thread; the registry swaps adapters between two decoding steps of running generations.
        """
        runner = self._require_runner()
        failures = await asyncio.to_thread(runner.reload_adapters)
        return {expert.value: reason for expert, reason in failures.items()}

    # ------------------------------------------------------------------------------------ answering

    async def generate(self, request: AnswerRequest) -> AsyncIterator[Event]:
        """Yield guarded ``TokenDelta``s, then one ``Answer``. Closing the iterator aborts the request."""
        request = validate_request(request, self.settings.engine.max_new_tokens)
        stream = await self._worker.submit(_Payload(request, time.perf_counter()))
        async with stream:
            async for event in stream:
                yield event
            answer = stream.result
        if not isinstance(answer, Answer):
            raise GenerationError("the engine finished without an answer")
        yield answer

    async def ask(self, request: AnswerRequest) -> Answer:
        answer: Answer | None = None
        async for event in self.generate(request):
            if isinstance(event, Answer):
                answer = event
        if answer is None:
            raise GenerationError("the engine finished without an answer")
        return answer

    async def end_session(self, session_id: str) -> None:
        await asyncio.to_thread(self.conversations.end, session_id)  # a disk write: off the loop
        runner = self._runner
        if runner is not None:
            runner.end_session(session_id)

    # ------------------------------------------------------------------------------------ status

    def status(self) -> EngineStatus:
        worker = self._worker.status()
        runner = self._runner
        p95 = float(np.percentile(self._latencies, 95, method="higher")) if self._latencies else None
        return EngineStatus(
            alive=worker.alive,
            queue_depth=worker.queue_depth,
            queue_capacity=worker.queue_capacity,
            sessions=len(self.conversations),
            session_bytes=self.kv_sessions.bytes if self.kv_sessions is not None else 0,
            adapters=runner.serving_versions() if runner is not None else {},
            latency_p95_ms=p95,
            restarts=worker.restarts,
            last_error=worker.last_error,
        )

    def stats(self) -> dict[str, Any]:
        """Worker, KV-session and adapter counters (diagnostics and benchmarks)."""
        runner = self._runner
        return {
            "worker": asdict(self._worker.status()),
            "kv_sessions": asdict(self.kv_sessions.stats()) if self.kv_sessions is not None else None,
            "adapters": runner.adapter_stats() if runner is not None else None,
            "conversations": len(self.conversations),
        }

    @property
    def worker(self) -> EngineWorker:
        return self._worker

    @property
    def kv_sessions(self) -> SessionStore | None:
        """The current ``SessionStore`` (KV caches), or None while no runner is loaded (or a remote one)."""
        return self._runner.kv_sessions if self._runner is not None else None

    # ------------------------------------------------------------------------------------ lookups

    @property
    def knowledge(self) -> KnowledgeBase:
        if self._knowledge is None:
            raise EngineDead("the engine has not been started")
        return self._knowledge

    def rule(self, number: str) -> tuple[Rule, list[Rule], str]:
        return self.knowledge.rule(number)

    def card(self, name: str) -> Card:
        return self.knowledge.card(name)

    def autocomplete_cards(self, prefix: str, limit: int = 25) -> list[str]:
        return self.knowledge.autocomplete_cards(prefix, limit)

    def autocomplete_rules(self, prefix: str, limit: int = 25) -> list[str]:
        return self.knowledge.autocomplete_rules(prefix, limit)

    # ------------------------------------------------------------------------------------ worker side

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    def _require_runner(self) -> EngineRunner:
        if self._runner is None:
            raise EngineDead("the engine is not running")
        return self._runner

    def _build_runner(self) -> EngineRunner:
        """The worker's runner factory: runs in the worker thread, at start and after every crash."""
        from engine.adapter_store import AdapterStore, ensure_initial_adapters
        from engine.adapters import AdapterRegistry
        from engine.model_loader import load_base_model
        from engine.sessions import SessionStore

        settings = self.settings
        self._runner = None
        if self._knowledge is None:
            from knowledge.base import KnowledgeBase

            self._say("Loading the rules, cards and search index (the first run builds the index)...")
            self._knowledge = KnowledgeBase.load(settings, progress=self._progress is not None)
        if self._router is None:
            from engine.router import load_or_train_router
            from knowledge.embeddings import get_embedder

            embedder = get_embedder(settings.knowledge.embedding_model)
            self._router = load_or_train_router(
                settings.paths.state_dir, embedder, settings.engine.router_threshold
            )
        backend = create_backend(settings)
        if backend is not None:  # generation on a remote OpenAI-compatible server; the rest stays here
            from engine.model_loader import load_embedded_tokenizer
            from engine.remote_runner import RemoteRunner

            self._say(f"Generating on {settings.engine.remote_url} ({backend.name} backend)...")
            # The embedded tokenizer counts context tokens; the server applies its own chat template.
            remote_pipeline = AnswerPipeline(
                self._knowledge,
                self._router,
                load_embedded_tokenizer(settings.paths),
                context_tokens=settings.knowledge.context_tokens,
                open_with_lead=False,  # the server applies its own chat template: no assistant prefix
            )
            self._runner = RemoteRunner(remote_pipeline, backend, self.conversations, on_record=self._record)
            return self._runner
        self._say("Loading the language model (the first run converts it)...")
        if settings.engine.threads is None:
            _default_threads()
        loaded = load_base_model(settings.engine, settings.paths)
        store = AdapterStore.from_settings(settings)
        ensure_initial_adapters(loaded, store)
        registry = AdapterRegistry(loaded, store, capacity_on_device=settings.engine.adapters_on_device)
        pipeline = AnswerPipeline(
            self._knowledge, self._router, loaded.tokenizer, context_tokens=settings.knowledge.context_tokens
        )
        runner = BatchRunner(
            pipeline,
            loaded,
            registry,
            SessionStore.from_settings(settings.engine),
            load_fusion(settings.paths.state_dir, loaded),
            self.conversations,
            batch_size=settings.engine.batch_size,
            stop_on_repeat=settings.engine.stop_on_repeat,
            admit_mid_batch=settings.engine.admit_mid_batch == "on"
            or (settings.engine.admit_mid_batch == "auto" and loaded.device.type == "cuda"),
            preload_adapters=self.preload_adapters,
            before_generate=self.before_generate,
            on_record=self._record,
        )
        self._runner = runner
        return runner

    def _record(self, record: RequestRecord) -> None:
        self._latencies.append(record.timings_ms.get("total", 0.0))
        self.records.append(record)


def _default_threads() -> None:
    """On CPU, leave one core to the event loop, retrieval and everything else (HEXCORE_ENGINE_THREADS
    overrides). Measured on the shared 2-core machine: two threads decoded 4x slower than one once other
    processes kept the cores busy (OpenMP threads spin waiting for each other)."""
    import torch

    if not torch.cuda.is_available():  # never more than a caller already chose (tests pin 1)
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1)))
