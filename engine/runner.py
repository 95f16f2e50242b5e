"""The local engine worker's runner: generates a batch of prepared requests together on the model in-process.

:class:`BatchRunner` is built in the worker thread (``engine.worker``) by ``LocalEngine``. The answer path
around generation (prepare, stream, settle) is ``engine.runner_core.RunnerCore``, shared with the remote
runner; this module only generates: every one-expert turn in one mixed-adapter generator batch
(``engine.generation``; requests arriving meanwhile may join it, see ``admit_mid_batch``) and each
several-expert turn as one fused generation (``engine.fused_turn``). Each answer is settled on its own
``WorkItem``: a failure in one request never fails the others.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.api import AnswerRequest, Expert
from engine.detokenize import without_loop
from engine.errors import AdapterError
from engine.experts import ExpertPlan, Routing, plan_experts
from engine.fused_turn import run_fused
from engine.pipeline import AnswerPipeline, RequestRecord
from engine.runner_core import Generated, Prepared, RunnerCore

if TYPE_CHECKING:
    from engine.adapters import AdapterRegistry
    from engine.conversations import ConversationStore
    from engine.fusion import CrossExpertAttention
    from engine.generation import Generator, GenJob, GenStats
    from engine.model_loader import LoadedModel
    from engine.sessions import SessionStore
    from engine.streaming import WorkItem
    from engine.worker import Admit

log = logging.getLogger(__name__)


def load_fusion(state_dir: Path, loaded: LoadedModel) -> CrossExpertAttention:
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
    """The engine worker's runner on the in-process model: one-expert turns decode together in one
    mixed-adapter generator batch; a turn with several experts runs as one fused generation after them."""

    def __init__(
        self,
        pipeline: AnswerPipeline,
        loaded: LoadedModel,
        registry: AdapterRegistry,
        sessions: SessionStore,
        fusion: CrossExpertAttention,
        conversations: ConversationStore,
        *,
        batch_size: int,
        stop_on_repeat: int = 0,
        admit_mid_batch: bool = False,
        preload_adapters: bool = True,
        before_generate: Callable[[list[AnswerRequest]], None] | None = None,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.core = RunnerCore(pipeline, conversations, self.plan, on_record)
        self.before_generate = before_generate
        self.loaded = loaded
        self.registry = registry
        self.sessions = sessions
        self.fusion = fusion
        self.stop_on_repeat = stop_on_repeat
        self.admit_mid_batch = admit_mid_batch
        """Take queued requests into a running generator batch (the worker's ``admit``)."""
        self.unavailable: dict[Expert, str] = {}
        """Experts whose adapter failed to register, with the reason."""
        if preload_adapters:
            for expert, error in registry.register_serving().items():
                log.warning("expert %s is unavailable: %s", expert.value, error)
                self.unavailable[expert] = str(error)
        from engine.generation import Generator

        # Given the registry, the generator follows its model (peft wraps it when the first adapter registers).
        self.generator: Generator = Generator(registry, loaded.tokenizer, sessions, max_batch_size=batch_size)

    # ---- what the engine asks of every runner ----

    @property
    def pipeline(self) -> AnswerPipeline:
        return self.core.pipeline

    @property
    def kv_sessions(self) -> SessionStore:
        return self.sessions

    def serving_versions(self) -> dict[str, str]:
        return self.registry.serving_versions()

    def adapter_stats(self) -> dict[str, Any]:
        return self.registry.stats()

    def reload_adapters(self) -> dict[Expert, str]:
        """Serve every expert's current serving version (a newly promoted one is hot-swapped in)."""
        failures = self.registry.register_serving()
        self.unavailable = {expert: str(error) for expert, error in failures.items()}
        return dict(self.unavailable)

    def end_session(self, session_id: str) -> None:
        self.core.end_session(session_id)
        self.sessions.end(session_id)

    def close(self) -> None:
        self.sessions.clear()

    # ---- experts ----

    def plan(self, routing: Routing) -> ExpertPlan:
        """The experts that answer (``engine.experts``), after registering any adapter not tried yet."""
        self._ensure_adapters(routing.experts)
        served = {Expert(e) for e in self.registry.serving_versions()}
        return plan_experts(routing, served, can_fuse=self.registry.peft_model is not None)

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

    # ---- generation ----

    def run(self, items: list[WorkItem], *, admit: Admit | None = None) -> None:
        """Answer ``items``; with ``admit`` (and ``admit_mid_batch``), requests queued meanwhile join the
        running generator batch."""
        prepared = self._prepare(items)
        singles = [p for p in prepared if len(p.turn.adapters) == 1]
        fused = [p for p in prepared if len(p.turn.adapters) > 1]
        if singles:
            self._run_batch(singles, admit if self.admit_mid_batch else None, fused)
        for p in fused:
            eos = self.generator.default_eos
            generated = run_fused(
                p, self.registry, self.loaded, self.fusion, eos=eos, stop_on_repeat=self.stop_on_repeat
            )
            if generated is not None:
                self.core.settle(p, generated)

    def _prepare(self, items: list[WorkItem]) -> list[Prepared]:
        prepared = self.core.prepare(items)
        if self.before_generate is not None and prepared:
            self.before_generate([p.turn.request for p in prepared])
        return prepared

    def _run_batch(self, batch: list[Prepared], admit: Admit | None, fused: list[Prepared]) -> None:
        """One mixed-adapter generator batch. With ``admit``, newly queued one-expert requests join it between
        decode steps (each holding its adapter until the batch ends); several-expert ones go to ``fused``."""
        generator = self.generator
        generation = self.registry.model_generation  # the generator follows the registry's model
        later: list[Prepared] = []
        with contextlib.ExitStack() as adapters_held:

            def jobs_for(prepared: list[Prepared]) -> list[GenJob]:
                jobs = []
                for p in prepared:
                    try:
                        (name,) = adapters_held.enter_context(self.registry.use(p.turn.adapters[:1]))
                    except AdapterError as exc:
                        p.item.fail(exc)  # vanished since it was planned (a failed swap): this one only
                        continue
                    jobs.append(self._job(p, name))
                return jobs

            def more(free: int) -> list[GenJob]:
                prepared = self._prepare(admit(free))  # type: ignore[misc]
                fused.extend(p for p in prepared if len(p.turn.adapters) > 1)
                singles = [p for p in prepared if len(p.turn.adapters) == 1]
                if self.registry.model_generation != generation:
                    later.extend(singles)  # a first adapter wrapped the model in peft: the next batch
                    return []
                return jobs_for(singles)

            jobs = jobs_for(batch)
            if jobs or admit is not None:
                generator.run_batch(jobs, admit=more if admit is not None else None)
        if later:
            self._run_batch(later, admit, fused)

    def _job(self, prepared: Prepared, adapter: str) -> GenJob:
        from engine.generation import GenJob

        turn, stream = prepared.turn, prepared.stream
        pieces: list[str] = []

        def on_token(delta: str) -> None:
            pieces.append(delta)
            stream.feed(delta)

        def on_done(ids: list[int], stats: GenStats) -> None:
            text = "".join(pieces)
            shown = None
            if stats.finish_reason == "repetition":  # the answer looped: show it without the loop
                shown = without_loop(self.loaded.tokenizer, text, ids, self.stop_on_repeat)
            generated = Generated(
                text,
                stats.finish_reason,
                shown=shown,
                prefill_ms=stats.prefill_ms,
                generate_ms=stats.decode_ms,
                adapters=(adapter,),
                prompt_tokens=stats.prompt_tokens,
                reused_tokens=stats.reused_tokens,
                new_tokens=stats.new_tokens,
                batch_size=stats.batch_size,
            )
            self.core.settle(prepared, generated)

        return GenJob(
            input_ids=turn.input_ids,
            adapter_name=adapter,
            max_new_tokens=turn.max_new_tokens,
            session_id=turn.request.session_id,
            on_token=on_token,
            on_done=on_done,
            on_error=prepared.item.fail,
            is_cancelled=prepared.item.cancel_event.is_set,
            submitted_at=turn.submitted_at,
            stop_on_repeat=self.stop_on_repeat,
        )
