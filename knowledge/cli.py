"""Knowledge commands: ``hexcore data update``, ``hexcore index build|stats``, ``hexcore rule``,
``hexcore card``, ``hexcore search`` and ``hexcore eval retrieval``.

Heavy modules (FAISS, sentence-transformers, networkx) are imported inside the commands, and ``rule`` and
``card`` load the knowledge base lazily, so they answer without touching the embedding model or the index.
A knowledge error (unknown rule or card, missing data, failed update) is one line on stderr and exit code 1;
a configuration problem (a data folder that must not be written) is exit code 2.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hexcore.cli_support import load_settings
from hexcore.errors import UsageProblem
from hexcore.imports import keep_bitsandbytes_out

UNBUDGETED_MS = 1e9

if TYPE_CHECKING:
    from knowledge.base import KnowledgeBase
    from knowledge.models import RetrievalResult


@contextmanager
def _knowledge_errors() -> Iterator[None]:
    """Knowledge errors carry user-facing messages: print that one line, not a traceback."""
    from knowledge.errors import KnowledgeError

    try:
        yield
    except KnowledgeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _load(lazy: bool, progress: bool = False, unbudgeted: bool = False) -> KnowledgeBase:
    """The knowledge base; ``unbudgeted`` lifts the retrieval latency budget: a one-shot command or an
    evaluation wants every stage (the bot's budget would skip the vector stage on a slow first query)."""
    from knowledge.base import KnowledgeBase

    keep_bitsandbytes_out()  # the embedder pulls in peft, and peft bitsandbytes: nothing here quantizes
    settings = load_settings()
    if unbudgeted:
        knowledge = settings.knowledge.model_copy(update={"retrieval_budget_ms": UNBUDGETED_MS})
        settings = type(settings)(
            paths=settings.paths,
            knowledge=knowledge,
            engine=settings.engine,
            bot=settings.bot,
            training=settings.training,
        )
    return KnowledgeBase.load(settings, lazy=lazy, progress=progress)


def read_only_reason(data_dir: Path) -> str | None:
    """Why ``data_dir`` must not be written, or None.

    Besides real write access this honours a folder *marked* read-only (no write bit): the shared data
    folder is such a folder, and a process running as root could otherwise overwrite it anyway.
    """
    folder = data_dir.expanduser().resolve()
    paths = [folder, folder / "rules", folder / "cards"]
    existing = [p for p in paths if p.exists()]
    if not existing:  # the update creates it: its nearest existing parent must take new folders
        parent = next((p for p in folder.parents if p.exists()), None)
        existing = [parent] if parent is not None else []
    for path in existing:
        mode = path.stat().st_mode
        if not path.is_dir():
            return f"{path} is not a folder"
        if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK | os.X_OK):
            return f"the data folder {path} is read-only"
    return None


def register(main: click.Group, eval_group: click.Group) -> None:
    main.add_command(data)
    main.add_command(index)
    main.add_command(rule_command)
    main.add_command(card_command)
    main.add_command(search_command)
    eval_group.add_command(eval_retrieval)


# ---------------------------------------------------------------------------------------------- data


@click.group()
def data() -> None:
    """Rules and card data."""


@data.command("update")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write rules/ and cards/ (default: HEXCORE_DATA_DIR or the configured data folder).",
)
def data_update(data_dir: Path | None) -> None:
    """Download the current Comprehensive Rules and Scryfall's oracle cards and rulings."""
    from knowledge.update import update_data

    settings = load_settings()
    target = (data_dir or settings.paths.data_dir).expanduser().resolve()
    reason = read_only_reason(target)
    if reason is not None:
        click.echo(
            f"error: {reason}; set HEXCORE_DATA_DIR (or pass --data-dir) to a writable folder and run "
            "`hexcore data update` again.",
            err=True,
        )
        sys.exit(2)
    from hexcore.state_lock import state_lock

    with _knowledge_errors(), state_lock(settings.paths.state_dir, "data update"):
        report = update_data(
            target,
            rules_page_url=settings.knowledge.rules_page_url,
            scryfall_bulk_url=settings.knowledge.scryfall_bulk_url,
            progress=True,
        )
    click.echo(report.summary())
    if target != settings.paths.data_dir:
        click.echo(f"Set HEXCORE_DATA_DIR={target} so that Hexcore reads this data.")
    click.echo("Run `hexcore index build` to rebuild the knowledge graph and the search index.")


# --------------------------------------------------------------------------------------------- index


@click.group()
def index() -> None:
    """The knowledge graph and the passage search index."""


@index.command("build")
@click.option("--fresh", is_flag=True, help="Embed every passage again instead of reusing cached vectors.")
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
def index_build(fresh: bool, as_json: bool) -> None:
    """Rebuild the knowledge graph and the vector index from the current data (always from scratch)."""
    from hexcore.state_lock import state_lock
    from knowledge.base import KnowledgeBase

    keep_bitsandbytes_out()
    settings = load_settings()
    with _knowledge_errors(), state_lock(settings.paths.state_dir, "index build"):
        try:
            report = KnowledgeBase.build(settings, progress=not as_json, reuse_embeddings=not fresh)
        except OSError as exc:
            click.echo(
                f"error: cannot write the index to {settings.paths.index_dir} ({exc.strerror or exc}); "
                "set HEXCORE_STATE_DIR to a writable folder.",
                err=True,
            )
            sys.exit(1)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.summary())


@index.command("stats")
def index_stats() -> None:
    """Counts, release, index manifest and timings of the saved knowledge base, as JSON (builds nothing)."""
    from knowledge.base import KnowledgeBase

    with _knowledge_errors():
        kb = KnowledgeBase.load(load_settings(), build_if_missing=False)
    click.echo(json.dumps(kb.stats(), indent=2, default=str))


# ------------------------------------------------------------------------------------------ lookups


@click.command("rule")
@click.argument("number")
def rule_command(number: str) -> None:
    """Print a rule with all its sub-rules, as printed, and the release it is quoted from."""
    if not number.strip():
        raise UsageProblem("the rule number is empty: give one, e.g. hexcore rule 702.19b")
    with _knowledge_errors():
        click.echo(_load(lazy=True).format_rule(number))


@click.command("card")
@click.argument("name", nargs=-1, required=True)
def card_command(name: tuple[str, ...]) -> None:
    """Print a card's oracle text (every face); nicknames and near misses work ("jace tms")."""
    from knowledge.card_names import format_card

    if not " ".join(name).strip():
        raise UsageProblem('the card name is empty: give one, e.g. hexcore card "jace tms"')
    with _knowledge_errors():
        click.echo(format_card(_load(lazy=True).card(" ".join(name))))


# ------------------------------------------------------------------------------------------- search


def result_json(result: RetrievalResult) -> dict:
    passage = result.passage
    return {
        "key": passage.key,
        "kind": passage.citation.kind,
        "id": passage.citation.id,
        "release": passage.citation.release,
        "score": round(float(result.score), 6),
        "sources": sorted(result.sources),
        "title": passage.title,
        "text": passage.text,
    }


def format_result(rank: int, result: RetrievalResult) -> str:
    from knowledge.context import citation_label

    passage = result.passage
    head = (
        f"{rank}. {citation_label(passage)}  score {result.score:.3f}  [{', '.join(sorted(result.sources))}]"
    )
    title = f"   {passage.title}\n" if passage.title and passage.title != passage.citation.id else ""
    body = "\n".join(f"   {line}" for line in passage.text.splitlines())
    return f"{head}\n{title}{body}"


@click.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option(
    "--k", "k", type=click.IntRange(1, 100), default=8, show_default=True, help="How many passages."
)
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(["rule", "glossary", "card", "ruling"]),
    multiple=True,
    help="Only passages of this kind (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of results.")
@click.option(
    "--rerank",
    is_flag=True,
    help="Run the answer path's second stage (each clause of the question searched too; the trained "
    "cross-encoder when HEXCORE_KNOWLEDGE_CROSS_ENCODER is on), under its own budget: ~2x slower.",
)
def search_command(
    query: tuple[str, ...], k: int, kinds: tuple[str, ...], as_json: bool, rerank: bool
) -> None:
    """Ranked rules, glossary, card and ruling passages for QUERY, with citations."""
    text = " ".join(" ".join(query).split())
    if not text:
        raise UsageProblem("the search query is empty: say what to search for, e.g. hexcore search trample")
    with _knowledge_errors():
        results = _load(lazy=True, progress=not as_json, unbudgeted=True).search(
            text, k=k, kinds=kinds or None, rerank=rerank
        )
    if as_json:
        click.echo(json.dumps([result_json(r) for r in results], indent=2, ensure_ascii=False))
        return
    if not results:
        click.echo("No passages found.")
    click.echo("\n\n".join(format_result(i, r) for i, r in enumerate(results, 1)))


# --------------------------------------------------------------------------------------------- eval


@click.command("retrieval")
@click.option(
    "--qa",
    "qa_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSONL questions with rule_refs or gold_cr_rules (default: qa/quiz-dev.jsonl in the data folder).",
)
@click.option("--k", "k", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report with per-question results as JSON.")
@click.option(
    "--rerank/--no-rerank",
    default=None,
    help="Measure with or without the trained re-ranker (default: as the answer path, HEXCORE_KNOWLEDGE_RERANK).",
)
def eval_retrieval(qa_path: Path | None, k: int, as_json: bool, rerank: bool | None) -> None:
    """Retrieval recall@k (and @1, @10, MRR) over rule passages: overall, per difficulty, and the misses."""
    from knowledge.recall import evaluate_recall, gold_rules, load_questions

    settings = load_settings()
    qa = qa_path or settings.paths.data_dir / "qa" / "quiz-dev.jsonl"
    with _knowledge_errors():
        rows = load_questions(qa)  # a missing or malformed file fails now, not after loading the index
        if not any(gold_rules(row) for row in rows):
            what = "no questions" if not rows else "no question with gold rules (rule_refs or gold_cr_rules)"
            click.echo(f"error: {qa} has {what}: nothing to measure recall on", err=True)
            sys.exit(1)
        kb = _load(lazy=False, progress=not as_json, unbudgeted=True)
        report = evaluate_recall(_Reranking(kb, rerank), qa, k=k)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
        return
    cuts = "  ".join(f"recall@{c} {v:.3f}" for c, v in report.recall_at.items())
    click.echo(f"recall@{k}: {report.recall:.3f} ({report.hits}/{report.scored} questions, {qa.name})")
    click.echo(f"{cuts}  MRR {report.mrr:.3f}")
    for name, group in report.by_difficulty.items():
        click.echo(f"  {name}: {group['recall']:.3f} ({group['hits']}/{group['scored']})")
    if report.skipped:
        click.echo(f"skipped (no gold rules): {len(report.skipped)}")
    misses = [r for r in report.results if not r.hit]
    if misses:
        click.echo("misses:")
        for r in misses:
            click.echo(
                f"  [{r.id}] gold {', '.join(r.gold)}; got {', '.join(r.retrieved) or '-'}: {r.question}"
            )


class _Reranking:
    """A knowledge base searched with a fixed re-ranking choice (None: the configured default)."""

    def __init__(self, kb: KnowledgeBase, rerank: bool | None) -> None:
        self.kb, self.rerank = kb, rerank

    def search(self, query: str, k: int = 8, kinds=None) -> list[RetrievalResult]:
        return self.kb.search(query, k=k, kinds=kinds, rerank=self.rerank)
