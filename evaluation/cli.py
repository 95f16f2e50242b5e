"""``hexcore eval qa``: answer quality and latency of the local engine on a question set.

The question file is read and checked before anything heavy loads, so a missing or malformed file is one
line on stderr and exit code 1 within a second. The engine is the one ``hexcore ask`` builds (same settings,
same retrieval budget: this measures what users get). Questions run one at a time; progress goes to stderr.
Ctrl-C stops the run and still prints (and writes) the report of the questions done, then exits 130.
The first question an expert answers includes loading its adapter, as in ``hexcore ask``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from engine.cli import EXPERT_CHOICE, open_engine, run_or_exit
from hexcore.cli_support import load_settings

if TYPE_CHECKING:
    from evaluation.qa import QAReport, QuestionResult

INTERRUPTED_EXIT = 130


def register(main: click.Group, eval_group: click.Group) -> None:
    eval_group.add_command(eval_qa)


@click.command("qa")
@click.option(
    "--qa",
    "qa_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSONL question set (default: DATA_DIR/qa/quiz-dev.jsonl).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full report (every question) as JSON.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N questions.")
@click.option(
    "--max-new-tokens", type=click.IntRange(1, 4096), default=None, help="Cap each answer's length."
)
@click.option(
    "--expert",
    "-e",
    "experts",
    multiple=True,
    type=EXPERT_CHOICE,
    help="Answer every question as this expert (repeat for several; default: the router chooses).",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write qa-quality-by-difficulty.png and qa-latency.png into this folder.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the JSON here.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
def eval_qa(
    qa_path: Path | None,
    as_json: bool,
    limit: int | None,
    max_new_tokens: int | None,
    experts: tuple[str, ...],
    plots_dir: Path | None,
    out_path: Path | None,
    quiet: bool,
) -> None:
    """Answer quality: citation recall and precision, agreement with the reference answers, latency."""
    from engine.api import Expert
    from knowledge.errors import DataMissing
    from knowledge.recall import load_questions

    settings = load_settings()
    qa = qa_path or settings.paths.data_dir / "qa" / "quiz-dev.jsonl"
    try:
        rows = load_questions(qa)  # a bad file fails now, not after minutes of loading the model
    except DataMissing as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    rows = rows[:limit] if limit else rows
    if not rows:
        click.echo(f"error: {qa} has no questions", err=True)
        sys.exit(1)
    fixed = [Expert(e.lower()) for e in experts] or None
    engine = open_engine(settings, quiet)
    progress = None if quiet else _progress

    async def main() -> QAReport:
        from evaluation.qa import evaluate_qa
        from knowledge.embeddings import get_embedder

        try:
            await engine.start()
            embedder = get_embedder(settings.knowledge.embedding_model)  # the engine's, already loaded
            return await evaluate_qa(
                engine,
                rows,
                embedder=embedder.encode,
                max_new_tokens=max_new_tokens,
                experts=fixed,
                progress=progress,
            )
        finally:
            await engine.close()

    report: QAReport = run_or_exit(main())
    report.source = str(qa)
    _output(report, as_json, plots_dir, out_path)
    if report.interrupted:
        sys.exit(INTERRUPTED_EXIT)


def _progress(done: int, total: int, result: QuestionResult) -> None:
    if result.error is not None:
        outcome = f"error: {result.error}"
    else:
        recall = "–" if result.citation_recall is None else f"{result.citation_recall:.2f}"
        outcome = f"citation recall {recall}"
    click.echo(
        f"hexcore: [{done}/{total}] {result.id} ({result.difficulty}) {result.latency_s:.2f} s, {outcome}",
        err=True,
    )


def _output(report: QAReport, as_json: bool, plots_dir: Path | None, out_path: Path | None) -> None:
    data = json.dumps(report.to_json(), indent=2, ensure_ascii=False)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(data + "\n", encoding="utf-8")
    if as_json:
        click.echo(data)
    else:
        click.echo(report.to_markdown())
        click.echo()
        click.echo(report.totals_line())
    if plots_dir is not None:
        from evaluation.qa import write_plots

        for path in write_plots(report, plots_dir):
            click.echo(f"chart: {path}", err=as_json)  # stdout stays pure JSON with --json
