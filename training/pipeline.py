"""Train, validate and (maybe) promote expert adapters: one expert, or the bot's nightly retraining.

Crash safety comes from the order of writes. Everything a run produces (exported data, checkpoints, curves,
the trained adapter) lives in its own run directory under ``<state_dir>/training/runs``. Only after
training and validation finish does the pipeline touch the adapter store, and then only in two atomic
steps: ``AdapterStore.save_new`` (a new version directory, renamed into place) and, if validation says so,
``AdapterStore.promote`` (an atomic replace of ``serving.json``). A crash or kill at any earlier point
leaves the serving adapters byte-for-byte as they were; ``hexcore train --resume <run dir>`` continues the
interrupted run from its newest checkpoint.

A trained adapter that does not beat the serving one is still stored (not served), so an admin can inspect
it or ``hexcore adapters promote`` it by hand; the report says why it was not promoted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.api import Expert
from training.checkpoint import resolve_checkpoint, run_dir_of
from training.config import TrainConfig, load_training_config
from training.datasets import (
    ExpertDataset,
    admin_files,
    build_expert_dataset,
    feedback_examples,
    load_rules_document,
)
from training.distributed import is_main_process, shared_run_dir, wait_for_everyone
from training.errors import CheckpointError, TrainingError
from training.examples import TrainingExample, read_examples
from training.paths import training_dir

if TYPE_CHECKING:
    from engine.model_loader import LoadedModel
    from hexcore.settings import Settings

log = logging.getLogger(__name__)

SEEN_FILE = "seen.json"


@dataclass(slots=True)
class ExpertOutcome:
    expert: str
    promoted: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    """The stored candidate version (None when training failed)."""
    serving: str | None = None
    """What the expert serves after this run."""
    run_dir: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class RetrainReport:
    started: str
    finished: str = ""
    experts: dict[str, ExpertOutcome] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Expert -> why it was not retrained (not enough new data, another run in progress)."""
    retriever: dict[str, Any] | None = None
    """The retriever run's report (``settings.training.nightly_retriever``), or its error."""

    @property
    def promoted(self) -> list[str]:
        return [name for name, outcome in self.experts.items() if outcome.promoted]

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "finished": self.finished,
            "promoted": self.promoted,
            "experts": {k: v.to_json() for k, v in self.experts.items()},
            "skipped": self.skipped,
            "retriever": self.retriever,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _load_run(run_dir: Path) -> tuple[str, TrainConfig, ExpertDataset]:
    """The expert, config and exact data of an earlier run (what ``--resume`` continues)."""
    try:
        meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{run_dir} is not a training run directory (no readable run.json): {exc}"
        ) from exc
    expert = meta["expert"]
    config = TrainConfig.from_dict(meta["config"], source=str(run_dir / "run.json"))
    data = run_dir / "data"
    train = read_examples(data / "train.jsonl", expert)
    val = read_examples(data / "val.jsonl", expert)
    negatives = (
        read_examples(data / "negatives.jsonl", expert) if (data / "negatives.jsonl").is_file() else []
    )
    return expert, config, ExpertDataset(expert, train, val, negatives, meta.get("dataset", {}))


def _resumed_run(
    resume: Path | str, expert: Expert | str | None, overrides: Mapping[str, Any] | None
) -> tuple[Path, Path, str, TrainConfig, ExpertDataset]:
    """(checkpoint, run dir, expert, config, data) of the run ``resume`` continues; CheckpointError when
    ``expert`` or ``overrides`` contradict that run."""
    checkpoint = resolve_checkpoint(resume)
    run_dir = run_dir_of(checkpoint)
    run_expert, config, dataset = _load_run(run_dir)
    if expert is not None and Expert(expert).value != run_expert:
        raise CheckpointError(f"{run_dir} trains expert {run_expert!r}, not {Expert(expert).value!r}")
    changed = {k: v for k, v in (overrides or {}).items() if v is not None and getattr(config, k) != v}
    if changed:
        raise CheckpointError(
            f"a resumed run keeps its own settings; drop {', '.join(changed)} or start a new run"
        )
    return checkpoint, run_dir, run_expert, config, dataset


def _new_run(settings: Settings, expert: str, config: TrainConfig, dataset: ExpertDataset) -> Path:
    """A new run directory (the same in every process) holding the run's data and ``run.json``."""
    run_dir = shared_run_dir(settings, expert)
    if is_main_process():
        run_dir.mkdir(parents=True)
        dataset.export(run_dir / "data")
        record = {"expert": expert, "config": config.to_json(), "dataset": dataset.stats, "created": _now()}
        (run_dir / "run.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    wait_for_everyone()
    return run_dir


def train_expert(
    settings: Settings,
    expert: Expert | str | None = None,
    *,
    config: TrainConfig | None = None,
    feedback: Iterable[Mapping[str, Any]] = (),
    resume: Path | str | None = None,
    loaded: LoadedModel | None = None,
    promote: bool = True,
    dataset: ExpertDataset | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ExpertOutcome:
    """Train one expert's adapter, validate it against the base model and the serving adapter, store it,
    and promote it if it is better by the configured margin. ``resume`` continues an interrupted run
    (a run directory or one of its checkpoints) with that run's own expert, config and data."""
    from engine.model_loader import load_base_model
    from training.plots import plot_curves
    from training.trainer import LoraTrainer

    checkpoint = None
    if resume is not None:
        checkpoint, run_dir, expert, config, dataset = _resumed_run(resume, expert, overrides)
    else:
        if expert is None:
            raise TrainingError("name an expert to train")
        expert = Expert(expert).value
        config = (config or load_training_config(settings)).replace(**dict(overrides or {}))
        loaded = loaded or load_base_model(settings.engine, settings.paths)
        dataset = dataset or build_expert_dataset(
            settings, expert, feedback, config, tokenizer=loaded.tokenizer
        )
        run_dir = _new_run(settings, expert, config, dataset)
    assert dataset is not None and config is not None

    started = time.perf_counter()
    loaded = loaded or load_base_model(settings.engine, settings.paths)
    trainer = LoraTrainer(loaded, dataset.train, dataset.val, config, run_dir, prompt_experts=[expert])
    try:
        if checkpoint is not None:
            trainer.resume(checkpoint)
        result = trainer.train()
    finally:
        trainer.release()

    if not is_main_process():  # several GPUs: the main process validates, stores and promotes
        wait_for_everyone()
        return ExpertOutcome(expert, False, "validated and stored by the main process", run_dir=str(run_dir))
    outcome = validate_and_store(
        settings,
        loaded,
        expert,
        result.adapter_dir,
        dataset,
        config,
        run_dir=run_dir,
        promote=promote,
        training=result.to_json(),
    )
    plot_curves(result.history, run_dir / "curves.png", title=f"{expert} adapter ({outcome.version})")
    log.info("expert %s: %s (%.0f s)", expert, outcome.reason, time.perf_counter() - started)
    wait_for_everyone()
    return outcome


def validate_and_store(
    settings: Settings,
    loaded: LoadedModel,
    expert: str,
    adapter_dir: Path,
    dataset: ExpertDataset,
    config: TrainConfig,
    *,
    run_dir: Path | None = None,
    promote: bool = True,
    training: Mapping[str, Any] | None = None,
) -> ExpertOutcome:
    """Validate a trained adapter against the base model and the serving adapter, store it as a new version,
    and promote it only if it is better by ``config.promotion_margin``. Writes ``report.json`` into
    ``run_dir`` when given."""
    from engine.adapter_store import AdapterStore, ensure_initial_adapters
    from training.validation import validate_adapter

    store = AdapterStore.from_settings(settings)
    # An expert with no served version gets the no-op v0 first, so an unpromoted candidate is never served
    # by default (the engine serves the oldest version of an expert that has no pointer).
    ensure_initial_adapters(loaded, store, (Expert(expert),))
    serving = store.serving(expert)
    report = validate_adapter(
        loaded,
        adapter_dir,
        dataset.val,
        expert=expert,
        margin=config.promotion_margin,
        serving_dir=serving.path if serving is not None and serving.path.is_dir() else None,
        serving_name=serving.version if serving is not None else None,
        negatives=dataset.negatives,
        max_seq_len=config.max_seq_len,
        batch_size=config.batch_size,
    )
    training = dict(training or {})
    metrics = {
        "base_perplexity": report.base.perplexity,
        "candidate_perplexity": report.candidate_result.perplexity,
        "serving_perplexity": report.serving_result.perplexity if report.serving_result else None,
        "reduction_vs_base": report.reduction_vs_base,
        "val_examples": report.candidate_result.examples,
    }
    for key in (
        "best_val_loss",
        "best_step",
        "final_step",
        "total_steps",
        "stopped_early",
        "train_examples",
        "seconds",
        "resumed_from",
    ):
        if key in training:
            metrics[key] = training[key]
    meta = {"base_model": loaded.name, "metrics": metrics, "validation": report.decision.to_json()}
    if run_dir is not None:
        meta["run_dir"] = str(run_dir)
    stored = store.save_new(expert, adapter_dir, meta)
    promoted = bool(promote and report.decision.promote)
    if promoted:
        store.promote(expert, stored.version)
    if promote or not report.decision.promote:
        reason = report.decision.reason
    else:
        reason = "not promoted: promotion disabled for this run (validation passed)"
    after = store.serving(expert)
    outcome = ExpertOutcome(
        expert,
        promoted,
        reason,
        metrics,
        stored.version,
        after.version if after else None,
        str(run_dir) if run_dir else None,
    )
    if run_dir is not None:
        full = {"outcome": outcome.to_json(), "training": training, "validation": report.to_json()}
        (run_dir / "report.json").write_text(json.dumps(full, indent=2), encoding="utf-8")
    return outcome


# --- the nightly job ---------------------------------------------------------------------------------------


def _read_seen(settings: Settings) -> dict[str, list[str]]:
    try:
        return json.loads((training_dir(settings) / SEEN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_seen(settings: Settings, seen: dict[str, list[str]]) -> None:
    path = training_dir(settings) / SEEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(seen), encoding="utf-8")
    tmp.replace(path)


def new_data_counts(
    settings: Settings, feedback: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, tuple[int, set[str]]], dict[str, str]]:
    """Per expert: how many feedback and admin examples it has not been trained on yet (and their ids);
    and, per expert, why its admin files could not be read (such an expert is not retrained)."""
    seen = _read_seen(settings)
    rows = feedback_examples(feedback)
    out, errors = {}, {}
    for expert in Expert:
        ids = {e.uid for e in rows if expert.value in e.experts}
        try:
            for path in admin_files(settings.paths.state_dir, expert.value):
                ids |= {e.uid for e in read_examples(path, expert.value, settings.paths.data_dir)}
        except TrainingError as exc:
            errors[expert.value] = f"admin training data refused: {exc}"
        fresh = ids - set(seen.get(expert.value, []))
        out[expert.value] = (len(fresh), ids)
    return out, errors


def run_retraining(
    settings: Settings,
    experts: list[str] | None = None,
    feedback_examples: list[dict] | None = None,
    *,
    config: TrainConfig | None = None,
    loaded: LoadedModel | None = None,
) -> RetrainReport:
    """Retrain the named experts, or every expert with at least ``settings.training.min_new_feedback`` new
    examples; validate each and promote only the better ones. Blocking (call it from a worker thread).

    A failure of one expert is reported in its outcome and never touches its serving adapter; the others
    still run. Only one retraining runs at a time per state directory (a file lock).
    """
    from filelock import FileLock, Timeout

    feedback = list(feedback_examples or [])
    report = RetrainReport(started=_now())
    training_dir(settings).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(training_dir(settings) / ".retrain.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        for name in experts or [e.value for e in Expert]:
            report.skipped[name] = "another retraining is running"
        report.finished = _now()
        return report
    try:
        counts, errors = new_data_counts(settings, feedback)
        threshold = max(1, settings.training.min_new_feedback)
        if experts:
            chosen = [Expert(e).value for e in experts]
        else:
            chosen = [name for name, (fresh, _) in counts.items() if fresh >= threshold]
            for name, (fresh, _) in counts.items():
                if name not in chosen:
                    report.skipped[name] = f"{fresh} new examples (needs {threshold})"
        for name in [n for n in chosen if n in errors]:
            chosen.remove(name)
            report.skipped[name] = errors[name]
        if settings.training.nightly_retriever and (experts is None or chosen):
            report.retriever = _retrain_retriever(settings, feedback, threshold)
        if not chosen:
            return report
        from engine.model_loader import load_base_model

        config = config or load_training_config(settings)
        loaded = loaded or load_base_model(settings.engine, settings.paths)
        doc = load_rules_document(settings)
        seen = _read_seen(settings)
        for name in chosen:
            try:
                dataset = build_expert_dataset(
                    settings, name, feedback, config, doc=doc, tokenizer=loaded.tokenizer
                )
                outcome = train_expert(settings, name, config=config, loaded=loaded, dataset=dataset)
                seen[name] = sorted(counts[name][1] | set(seen.get(name, [])))
                _write_seen(settings, seen)
            except Exception as exc:  # one expert's failure must not stop the others or touch serving
                log.exception("retraining %s failed", name)
                outcome = ExpertOutcome(
                    name,
                    False,
                    f"not promoted: training failed ({type(exc).__name__}: {exc})",
                    error=str(exc),
                )
            report.experts[name] = outcome
        return report
    finally:
        report.finished = _now()
        lock.release()


def _retrain_retriever(settings: Settings, feedback: list[dict], threshold: int) -> dict[str, Any]:
    """The retriever's nightly run, when enough helpful answers arrived; a failure is reported, and leaves
    the serving embedder, re-ranker and index as they were."""
    helpful = sum(1 for row in feedback if (row.get("score") or 0) > 0)
    if helpful < threshold:
        return {"skipped": f"{helpful} new helpful answers (needs {threshold})"}
    try:
        from training.retriever_pipeline import run_retriever_training

        return run_retriever_training(settings, feedback).to_json()
    except Exception as exc:  # noqa: BLE001 - the experts' results must still be reported
        log.exception("retriever retraining failed")
        return {"error": f"{type(exc).__name__}: {exc}"}


def retrain_fusion(
    settings: Settings,
    feedback: Iterable[Mapping[str, Any]] = (),
    *,
    config: TrainConfig | None = None,
    loaded: LoadedModel | None = None,
    promote: bool = True,
) -> ExpertOutcome:
    """Train the cross-expert attention over the serving adapters; store it, and promote it if it is better."""
    from engine.adapter_store import AdapterStore, ensure_initial_adapters
    from engine.fusion import CrossExpertAttention
    from engine.model_loader import load_base_model
    from training.datasets import build_mixed_dataset
    from training.fusion_train import FusionStore, train_fusion

    config = config or load_training_config(settings)
    loaded = loaded or load_base_model(settings.engine, settings.paths)
    dataset = build_mixed_dataset(settings, feedback, config)
    store = AdapterStore.from_settings(settings)
    serving = ensure_initial_adapters(loaded, store)
    dirs = {expert.value: version.path for expert, version in serving.items()}
    fusion_store = FusionStore.from_settings(settings)
    current = fusion_store.serving()
    result = train_fusion(
        loaded,
        dirs,
        dataset.train,
        dataset.val,
        config,
        serving=CrossExpertAttention.load(current) if current else None,
    )
    meta = {
        "adapters": {k: v.version for k, v in serving.items()},
        "base_model": loaded.name,
        "metrics": result.to_json(),
        "history": result.history,
    }
    version = fusion_store.save_new(result.fusion, meta)
    promoted = bool(promote and result.promote)
    if promoted:
        fusion_store.promote(version)
    after = fusion_store.serving()
    return ExpertOutcome(
        "fusion", promoted, result.reason, result.to_json(), version, after.name if after else None
    )


def held_out_for(
    settings: Settings, adapter_dir: Path, expert: str | None, config: TrainConfig
) -> tuple[str, list[TrainingExample]]:
    """(expert, held-out examples) to validate an adapter directory on.

    The run's own validation split when the adapter comes from a run (``<run>/adapter``, a checkpoint, or a
    stored version whose meta.json names its run), else the expert's current held-out split.
    """
    adapter_dir = Path(adapter_dir).resolve()
    meta: dict[str, Any] = {}
    try:
        meta = json.loads((adapter_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    candidates = [Path(meta["run_dir"])] if meta.get("run_dir") else []
    candidates += [adapter_dir.parent, adapter_dir.parent.parent.parent]
    for run_dir in candidates:
        if (run_dir / "run.json").is_file() and (run_dir / "data" / "val.jsonl").is_file():
            run_expert, _, dataset = _load_run(run_dir)
            if expert is not None and expert != run_expert:
                raise TrainingError(f"{adapter_dir} was trained for {run_expert!r}, not {expert!r}")
            return run_expert, dataset.val
    expert = expert or meta.get("expert")
    if not expert:
        raise TrainingError(f"cannot tell which expert {adapter_dir} is for; pass --expert")
    return Expert(expert).value, build_expert_dataset(settings, expert, config=config).val
