"""``hexcore train`` and ``hexcore validate``; the store commands (``adapters``, ``retriever``) are in
:mod:`training.admin_cli`.

Heavy imports (torch, transformers, peft) happen inside the commands. Expected failures (bad config,
unknown expert, missing checkpoint, evaluation data) print one line and exit 1, never a traceback.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from hexcore.cli_support import load_settings

if TYPE_CHECKING:
    from engine.adapter_store import AdapterVersion
    from hexcore.settings import Settings
    from training.pipeline import ExpertOutcome

P = ParamSpec("P")
R = TypeVar("R")

EXPERT_NAMES = ("reason", "explain", "teach", "predict", "retrospect")


def fail_on_known_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Expected failures (training, engine, knowledge errors) become click's one-line error, exit 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from engine.errors import EngineError
        from knowledge.errors import KnowledgeError
        from training.errors import TrainingError

        try:
            return func(*args, **kwargs)
        except (TrainingError, EngineError, KnowledgeError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _echo_outcome(outcome: ExpertOutcome, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(outcome.to_json(), indent=2))
        return
    m = outcome.metrics
    click.echo(f"{outcome.expert}: {outcome.reason}")
    if "base_perplexity" in m:
        serving = m.get("serving_perplexity")
        click.echo(
            f"  perplexity base {m['base_perplexity']:.3f} | new {outcome.version} {m['candidate_perplexity']:.3f}"
            + (f" | serving {serving:.3f}" if serving is not None else "")
            + f"  ({m['reduction_vs_base']:.1%} below base)"
        )
        click.echo(
            f"  {m.get('final_step')}/{m.get('total_steps')} steps{' (stopped early)' if m.get('stopped_early') else ''}, "
            f"best at step {m.get('best_step')}, {m.get('seconds', 0):.0f} s; serving now: {outcome.serving}"
        )
    if outcome.run_dir:
        click.echo(f"  run: {outcome.run_dir}")


@click.command("train")
@click.option(
    "--expert",
    "experts",
    multiple=True,
    type=click.Choice(EXPERT_NAMES),
    help="Expert to train (repeatable).",
)
@click.option("--all", "all_experts", is_flag=True, help="Train every expert.")
@click.option("--router", is_flag=True, help="Retrain the expert router (about a second).")
@click.option("--fusion", is_flag=True, help="Train the cross-expert attention over the serving adapters.")
@click.option(
    "--retriever",
    is_flag=True,
    help="Fine-tune the search embedder and train the re-ranker (validated; promoted only when "
    "better; the index is rebuilt for a new embedder). About 10-20 min on 2 CPU cores.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Training config (YAML or JSON).",
)
@click.option(
    "--resume",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Continue an interrupted run (run dir or checkpoint).",
)
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after N optimizer steps.")
@click.option("--epochs", type=click.IntRange(min=1), help="Number of epochs.")
@click.option("--no-promote", is_flag=True, help="Validate and store the adapter, but never promote it.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@fail_on_known_errors
def train_command(
    experts: tuple[str, ...],
    all_experts: bool,
    router: bool,
    fusion: bool,
    retriever: bool,
    config_file: Path | None,
    resume: Path | None,
    max_steps: int | None,
    epochs: int | None,
    no_promote: bool,
    as_json: bool,
) -> None:
    """Train expert LoRA adapters (validated; promoted only when better), the router, the fusion, or the
    retriever."""
    from hexcore.state_lock import state_lock

    modes = sum([bool(experts), all_experts, router, fusion, retriever])
    if modes == 0 and resume is None:
        raise click.UsageError(
            "say what to train: --expert NAME, --all, --router, --fusion, --retriever or --resume DIR"
        )
    if modes > 1:
        raise click.UsageError("use one of --expert, --all, --router, --fusion, --retriever")
    if resume is not None and (config_file is not None or len(experts) > 1 or all_experts or fusion):
        raise click.UsageError(
            "--resume continues one run with its own config; it takes no --config or --all"
        )
    with state_lock(load_settings().paths.state_dir, "training run"):
        if retriever:
            _train_retriever(load_settings(), as_json, promote=not no_promote)
            return
        _train(
            experts,
            all_experts,
            router,
            fusion,
            config_file,
            resume,
            max_steps,
            epochs,
            no_promote,
            as_json,
        )


@click.command("validate")
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--expert", type=click.Choice(EXPERT_NAMES), help="Default: from the adapter's meta.json or run."
)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@fail_on_known_errors
def validate_command(adapter_dir: Path, expert: str | None, config_file: Path | None, as_json: bool) -> None:
    """Held-out perplexity of ADAPTER_DIR vs the base model and the serving adapter (promotes nothing)."""
    from engine.adapter_store import AdapterStore
    from engine.model_loader import load_base_model
    from training.config import load_training_config
    from training.pipeline import held_out_for
    from training.validation import validate_adapter

    settings = load_settings()
    check_adapter_dir(adapter_dir)  # garbage files fail here, before the data and the base model load
    config = load_training_config(settings, config_file)
    expert, val = held_out_for(settings, adapter_dir, expert, config)
    loaded = load_base_model(settings.engine, settings.paths)
    serving = AdapterStore.from_settings(settings).serving(expert)
    report = validate_adapter(
        loaded,
        adapter_dir,
        val,
        expert=expert,
        margin=config.promotion_margin,
        serving_dir=serving.path if serving and serving.path.is_dir() else None,
        serving_name=serving.version if serving else None,
        max_seq_len=config.max_seq_len,
        batch_size=config.batch_size,
    )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    click.echo(f"{expert}: {len(val)} held-out examples")
    click.echo(f"  base     perplexity {report.base.perplexity:.3f}")
    click.echo(
        f"  adapter  perplexity {report.candidate_result.perplexity:.3f} ({report.reduction_vs_base:.1%} below base)"
    )
    if report.serving_result is not None:
        click.echo(f"  serving  perplexity {report.serving_result.perplexity:.3f} ({report.serving})")
    click.echo(
        f"  {report.decision.reason.replace('promoted:', 'would be promoted:', 1) if report.decision.promote else report.decision.reason}"
    )


def _train(
    experts: tuple[str, ...],
    all_experts: bool,
    router: bool,
    fusion: bool,
    config_file: Path | None,
    resume: Path | None,
    max_steps: int | None,
    epochs: int | None,
    no_promote: bool,
    as_json: bool,
) -> None:
    """``hexcore train`` once its options are checked and the state dir is locked."""
    settings = load_settings()
    if router:
        _train_router(settings, as_json)
        return
    from training.config import load_training_config
    from training.pipeline import retrain_fusion, train_expert

    overrides = {"max_steps": max_steps, "epochs": epochs}
    if resume is not None:
        outcome = train_expert(
            settings,
            experts[0] if experts else None,
            resume=resume,
            promote=not no_promote,
            overrides=overrides,
        )
        _echo_outcome(outcome, as_json)
        return
    config = load_training_config(settings, config_file).replace(**overrides)
    if fusion:
        _echo_outcome(retrain_fusion(settings, config=config, promote=not no_promote), as_json)
        return
    from engine.model_loader import load_base_model

    loaded = load_base_model(settings.engine, settings.paths)
    for name in EXPERT_NAMES if all_experts else experts:
        _echo_outcome(
            train_expert(settings, name, config=config, loaded=loaded, promote=not no_promote), as_json
        )


def check_adapter_dir(adapter_dir: Path) -> None:
    """Read and check ADAPTER_DIR's files as serving would (config, weights, checksum); TrainingError if it
    is no adapter. Needs torch and peft, not the base model: seconds, not the minutes a model load takes."""
    from engine.adapter_store import AdapterVersion, read_adapter_files
    from engine.api import Expert
    from engine.errors import AdapterError
    from training.errors import TrainingError

    meta: dict[str, Any] = {}
    try:
        loaded = json.loads((adapter_dir / "meta.json").read_text(encoding="utf-8"))
        meta = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass
    target = AdapterVersion(Expert.REASON, adapter_dir.name, adapter_dir, meta)  # the expert is not checked
    try:
        _check_adapter_headers(target)  # milliseconds: garbage fails before torch and peft are imported
        read_adapter_files(target, max_rank=1 << 16)
    except AdapterError as exc:
        reason = exc.reason.removeprefix(f"{target.version}: ")
        raise TrainingError(f"{adapter_dir} is not a usable adapter: {reason}") from None


def _check_adapter_headers(target: AdapterVersion) -> None:
    """Both peft files present, the config a JSON object, the weights a safetensors file (its header)."""
    import struct

    from engine.adapter_store import CONFIG_FILE, REQUIRED_FILES, WEIGHTS_FILE
    from engine.errors import AdapterError

    def fail(reason: str) -> AdapterError:
        return AdapterError(target.expert.value, reason)

    missing = [name for name in REQUIRED_FILES if not (target.path / name).is_file()]
    if missing:
        raise fail(f"it lacks {', '.join(missing)}")
    try:
        config = json.loads((target.path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise fail(f"{CONFIG_FILE} is not a JSON object")
    try:
        with open(target.path / WEIGHTS_FILE, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = (
                json.loads(fh.read(min(size, 100_000_000)).decode("utf-8")) if size < 100_000_000 else None
            )
    except (OSError, ValueError, struct.error) as exc:
        raise fail(f"{WEIGHTS_FILE} is not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise fail(f"{WEIGHTS_FILE} is not a safetensors file (bad header)")


def _train_router(settings: Settings, as_json: bool) -> None:
    from engine.router import examples_hash, load_examples, train_router

    examples = load_examples()
    router = train_router(examples, thresholds=settings.engine.router_threshold)
    router.save(settings.paths.state_dir / "router", examples_hash(examples))
    metrics = router.metrics.to_json() if router.metrics else {}
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        click.echo(
            f"router trained on {metrics.get('train_size')} examples: held-out exact {metrics.get('exact_match', 0):.3f}, top-1 {metrics.get('top1', 0):.3f}"
        )


def _train_retriever(settings: Settings, as_json: bool, promote: bool) -> None:
    from training.retriever import RetrieverTrainConfig
    from training.retriever_pipeline import feedback_rows, run_retriever_training

    config = RetrieverTrainConfig(margin=float("inf")) if not promote else None
    report = run_retriever_training(settings, feedback_rows(settings), config=config)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    click.echo(f"retriever: {report.data['pairs']} pairs; {report.seconds:.0f} s; run: {report.run_dir}")
    for outcome in report.outcomes:
        m = outcome.metrics
        click.echo(
            f"  {outcome.role}: {outcome.reason}; validation MRR {m['baseline']['mrr']:.3f} -> "
            f"{m['candidate']['mrr']:.3f}; {m['train']['seconds']:.0f} s training; "
            f"serving {outcome.serving or 'untrained'}"
        )
    if report.index_rebuilt:
        click.echo("  search index rebuilt with the new embedder")


def register(main: click.Group, eval_group: click.Group) -> None:
    main.add_command(train_command)
    main.add_command(validate_command)
