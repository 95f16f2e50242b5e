"""``hexcore adapters`` and ``hexcore retriever``: list, promote, roll back, export and compare what the
stores hold (expert adapters; the trained search embedder and re-ranker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hexcore.cli_support import load_settings
from training.cli import EXPERT_NAMES, fail_on_known_errors

if TYPE_CHECKING:
    from hexcore.settings import Settings


def register(main: click.Group, eval_group: click.Group) -> None:
    main.add_command(retriever_group)
    main.add_command(adapters_group)


@click.group("retriever")
def retriever_group() -> None:
    """List, promote and roll back the trained search embedder and re-ranker."""


@retriever_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_retrievers(as_json: bool) -> None:
    """Every stored version per role; * marks the serving one (none: the untrained model serves)."""
    from knowledge.retriever_store import ROLES, RetrieverStore

    store = RetrieverStore.from_settings(load_settings())
    data = {
        role: {
            "serving": store.serving(role),
            "versions": {v: store.meta(role, v).get("metrics", {}) for v in store.versions(role)},
        }
        for role in ROLES
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for role, info in data.items():
        versions = [f"{'*' if v == info['serving'] else ' '}{v}" for v in info["versions"]] or ["(none)"]
        click.echo(f"{role}: {' '.join(versions)}" + ("" if info["serving"] else "  [untrained serves]"))


@retriever_group.command("promote")
@click.argument("role", type=click.Choice(["embedder", "reranker"]))
@click.argument("version")
@fail_on_known_errors
def promote_retriever(role: str, version: str) -> None:
    """Serve VERSION of ROLE (an embedder change rebuilds the search index)."""
    from knowledge.retriever_store import RetrieverStore

    settings = load_settings()
    RetrieverStore.from_settings(settings).promote(role, version)
    _after_switch(settings, role)
    click.echo(f"{role}: serving {version}")


@retriever_group.command("rollback")
@click.argument("role", type=click.Choice(["embedder", "reranker"]))
@fail_on_known_errors
def rollback_retriever(role: str) -> None:
    """Serve the previous version of ROLE again (or the untrained model when there is none)."""
    from knowledge.retriever_store import RetrieverStore

    settings = load_settings()
    version = RetrieverStore.from_settings(settings).rollback(role)
    _after_switch(settings, role)
    click.echo(f"{role}: serving {version or 'the untrained model'}")


@click.group("adapters")
def adapters_group() -> None:
    """List, promote, roll back and compare stored expert adapters."""


@adapters_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@fail_on_known_errors
def list_adapters(as_json: bool) -> None:
    """Every stored version per expert; * marks the serving one."""
    from engine.adapter_store import AdapterStore

    store = AdapterStore.from_settings(load_settings())
    rows = {}
    for name in EXPERT_NAMES:
        serving = store.serving(name)
        rows[name] = {
            "serving": serving.version if serving else None,
            "versions": [
                {
                    "version": v.version,
                    "created": v.meta.get("created"),
                    "metrics": v.meta.get("metrics", {}),
                }
                for v in store.versions(name)
            ],
        }
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for name, row in rows.items():
        click.echo(f"{name}: serving {row['serving'] or '-'}")
        for v in row["versions"]:
            ppl = v["metrics"].get("candidate_perplexity")
            mark = "*" if v["version"] == row["serving"] else " "
            click.echo(
                f"  {mark} {v['version']:<5} {v['created'] or '':<26} {'' if ppl is None else f'perplexity {ppl:.3f}'}"
            )


@adapters_group.command("promote")
@click.argument("expert", type=click.Choice(EXPERT_NAMES))
@click.argument("version")
@fail_on_known_errors
def promote_adapter(expert: str, version: str) -> None:
    """Serve VERSION for EXPERT (atomic; the previous one can be rolled back to)."""
    from engine.adapter_store import AdapterStore
    from hexcore.state_lock import state_lock

    settings = load_settings()
    with state_lock(settings.paths.state_dir, "adapter promotion"):
        done = AdapterStore.from_settings(settings).promote(expert, version)
    click.echo(f"{expert} now serves {done.version}")


@adapters_group.command("rollback")
@click.argument("expert", type=click.Choice(EXPERT_NAMES))
@fail_on_known_errors
def rollback_adapter(expert: str) -> None:
    """Serve EXPERT's previous serving version again."""
    from engine.adapter_store import AdapterStore
    from hexcore.state_lock import state_lock

    settings = load_settings()
    with state_lock(settings.paths.state_dir, "adapter rollback"):
        done = AdapterStore.from_settings(settings).rollback(expert)
    click.echo(f"{expert} rolled back to {done.version}")


@adapters_group.command("export")
@click.option(
    "--base", "base_model", required=True, help="Base model as the vLLM host loads it (path or id)."
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--expert", "experts", multiple=True, type=click.Choice(EXPERT_NAMES), help="Only these.")
@fail_on_known_errors
def export_adapters_command(base_model: str, out_dir: Path, experts: tuple[str, ...]) -> None:
    """Write the serving adapters in vLLM's layout, with a generated launch.sh."""
    from engine.adapter_store import AdapterStore
    from engine.export import export_adapters

    store = AdapterStore.from_settings(load_settings())
    report = export_adapters(store.root, out_dir, base_model, experts=experts or None)
    click.echo(report.summary())


@adapters_group.command("compare")
@click.argument("expert", type=click.Choice(EXPERT_NAMES))
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True)
@fail_on_known_errors
def compare_adapters(expert: str, a: str, b: str, as_json: bool) -> None:
    """A/B two versions (or adapter dirs, or 'base') on EXPERT's held-out examples."""
    from engine.adapter_store import AdapterStore
    from engine.model_loader import load_base_model
    from training.config import load_training_config
    from training.datasets import build_expert_dataset
    from training.validation import compare

    settings = load_settings()
    store = AdapterStore.from_settings(settings)

    def where(x: str) -> Path | None:
        if x == "base":
            return None
        return Path(x) if Path(x).is_dir() else store.get(expert, x).path

    first, second = where(a), where(b)  # an unknown version fails before the data set and the model
    config = load_training_config(settings)
    val = build_expert_dataset(settings, expert, config=config).val
    result = compare(
        first,
        second,
        val,
        load_base_model(settings.engine, settings.paths),
        experts=[expert],
        max_seq_len=config.max_seq_len,
    )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(
        f"{expert}: A={a} perplexity {result.a.perplexity:.3f} | B={b} perplexity {result.b.perplexity:.3f}"
    )
    click.echo(
        f"  A wins on {result.a_win_rate:.0%} of {result.a.examples} examples; winner: {result.winner}"
    )


def _after_switch(settings: Settings, role: str) -> None:
    """A different embedder needs its own index: rebuild now rather than on the next start."""
    if role == "embedder":
        from knowledge.base import KnowledgeBase

        click.echo("rebuilding the search index for this embedder ...", err=True)
        KnowledgeBase.build(settings, progress=False)
