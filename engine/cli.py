"""``hexcore ask`` and ``hexcore chat``: grounded answers in the terminal, on the local engine.

``ask`` prints the answer, then every passage it cites, verbatim under its label ("CR 702.19b (2026-01-16)"),
or all of it as JSON (``--json``). On a terminal the answer streams as it is generated. ``chat`` is a
multi-turn session on one KV-cache session: ``/new`` starts a new conversation, ``/quit`` (or end of input)
leaves. The first run works from a clean state dir: the engine builds the search index and converts the
model as it starts, saying so on stderr. Missing data or a model that cannot load is one line on stderr and
exit code 1. torch and transformers are imported inside the commands, so ``hexcore --help`` stays instant.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TextIO

import click

from engine.api import Answer, AnswerRequest, Expert, LeadFound
from hexcore.cli_support import load_settings
from hexcore.errors import UsageProblem
from hexcore.imports import keep_bitsandbytes_out

if TYPE_CHECKING:
    from engine.local import LocalEngine
    from hexcore.settings import Settings
    from knowledge.lead import Lead
    from knowledge.models import Passage

EXPERT_CHOICE = click.Choice([e.value for e in Expert], case_sensitive=False)
CHAT_HELP = "Ask a question. /new starts a new conversation, /quit leaves."


def register(main: click.Group, eval_group: click.Group) -> None:
    main.add_command(ask_command)
    main.add_command(chat_command)


def open_engine(settings: Settings, quiet: bool) -> LocalEngine:
    """The local engine for a CLI command (``ask``, ``chat``, ``eval qa``), offline, progress on stderr."""
    _skip_bitsandbytes(settings)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    from engine.local import LocalEngine

    hf_logging.disable_progress_bar()  # "Loading weights" bars; the engine says what it loads (unless -q)

    progress = None if quiet else (lambda message: click.echo(f"hexcore: {message}", err=True))
    # One process, one or a few questions: load an expert's adapter when a question first needs it.
    return LocalEngine(settings, progress=progress, preload_adapters=False)


def _skip_bitsandbytes(settings: Settings) -> None:
    """Keep bitsandbytes out unless the engine quantizes with it (``HEXCORE_ENGINE_QUANTIZATION=4bit/8bit``)."""
    if (settings.engine.quantization or "") not in ("4bit", "8bit"):
        keep_bitsandbytes_out()


def run_or_exit(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro``; the engine's and the knowledge layer's typed errors become one line and exit code 1."""
    from engine.errors import EngineError
    from knowledge.errors import KnowledgeError

    try:
        return asyncio.run(coro)
    except (EngineError, KnowledgeError) as exc:
        click.echo(f"error: {str(exc) or getattr(exc, 'user_message', type(exc).__name__)}", err=True)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- output


def _label(passage: Passage) -> str:
    from knowledge.context import citation_label

    label = citation_label(passage)
    if passage.title and passage.citation.kind == "rule" and passage.title != passage.citation.id:
        label = f"{label} | {passage.title}"
    return label


def format_lead(lead: Lead, bold: bool = False) -> str:
    """The deciding rule verbatim under its label, its answering sentence marked (bold on a terminal)."""
    text, start, end = lead.passage.text, lead.start, lead.end
    if (start, end) == (0, len(text)):  # one sentence: the whole rule answers
        return f"[{_label(lead.passage)}]\n{text}"
    mark = click.style(text[start:end], bold=True) if bold else f">>{text[start:end]}<<"
    return f"[{_label(lead.passage)}]\n{text[:start]}{mark}{text[end:]}"


def format_sources(answer: Answer) -> str:
    """Each cited passage but the lead verbatim under its label, in citation order."""
    lead_key = answer.lead.passage.key if answer.lead else None
    blocks = [f"[{_label(p)}]\n{p.text}" for p in answer.passages if p.key != lead_key]
    heading = "Other sources" if lead_key else "Sources"
    return f"{heading}:\n\n" + "\n\n".join(blocks) if blocks else ""


def format_body(answer: Answer) -> str:
    """What follows the lead: the prose (or why none is shown, or the calculator's steps), the experts, the
    other sources."""
    parts = [answer.text]
    if answer.note:
        parts.append(f"Note: {answer.note}")
    if answer.experts and answer.passages:
        parts.append(f"({', '.join(e.value for e in answer.experts)})")
    sources = format_sources(answer)
    if sources:
        parts.append(sources)
    return "\n\n".join(parts)


def format_answer(answer: Answer, bold: bool = False) -> str:
    """The whole answer as text: the calculator's verdict when it answered, the deciding rule, then the
    rest (``format_body``)."""
    verdict = (
        f"{click.style(answer.verdict, bold=True) if bold else answer.verdict}\n\n" if answer.verdict else ""
    )
    lead = f"{format_lead(answer.lead, bold)}\n\n" if answer.lead else ""
    return verdict + lead + format_body(answer)


async def _answer(engine: LocalEngine, request: AnswerRequest, out: TextIO, stream: bool) -> Answer:
    """Generate one answer; with ``stream`` the deciding rule is written to ``out`` as soon as it is found.

    The prose is not streamed: it is shown only once it passed the support check, so nothing a user reads
    is taken back.
    """
    answer: Answer | None = None
    lead_shown = False
    async for event in engine.generate(request):
        if isinstance(event, LeadFound):
            if stream:
                out.write(format_lead(event.lead, bold=out.isatty()) + "\n\n")
                out.flush()
                lead_shown = True
        elif isinstance(event, Answer):
            answer = event
    assert answer is not None  # generate always ends with an Answer or raises
    if stream:
        body = format_body(answer) if lead_shown else format_answer(answer, bold=out.isatty())
        out.write(body + "\n")
        out.flush()
    return answer


def _stream_default(stream: bool | None, as_json: bool) -> bool:
    if as_json:
        return False
    return sys.stdout.isatty() if stream is None else stream


# ---------------------------------------------------------------------------------------------- ask


@click.command("ask")
@click.argument("question", nargs=-1, required=True)
@click.option(
    "--expert",
    "-e",
    "experts",
    multiple=True,
    type=EXPERT_CHOICE,
    help="Answer as this expert (repeat for several; default: the router chooses).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the answer and its citations as JSON.")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=None, help="Cap the answer length.")
@click.option(
    "--stream/--no-stream", default=None, help="Stream the answer (default: when stdout is a terminal)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
def ask_command(
    question: tuple[str, ...],
    experts: tuple[str, ...],
    as_json: bool,
    max_new_tokens: int | None,
    stream: bool | None,
    quiet: bool,
) -> None:
    """Answer QUESTION from the Comprehensive Rules and card texts, citing what it quotes."""
    request = AnswerRequest(
        question=" ".join(question),
        experts=tuple(Expert(e.lower()) for e in experts) or None,
        max_new_tokens=max_new_tokens,
    )
    streaming = _stream_default(stream, as_json)
    settings = load_settings()
    _check_request(request, settings)
    engine = open_engine(settings, quiet)

    async def main() -> Answer:
        try:
            await engine.start()
            return await _answer(engine, request, sys.stdout, streaming)
        finally:
            await engine.close()

    answer = run_or_exit(main())
    if as_json:
        click.echo(json.dumps(answer.to_json(), indent=2, ensure_ascii=False))
    elif not streaming:
        click.echo(format_answer(answer, bold=sys.stdout.isatty()))


def _check_request(request: AnswerRequest, settings: Settings) -> None:
    """The engine's own request checks, run before the model loads: a bad question is a usage error (2)."""
    from engine.errors import InvalidRequest
    from engine.pipeline import validate_request

    try:
        validate_request(request, settings.engine.max_new_tokens)
    except InvalidRequest as exc:
        raise UsageProblem(f'{exc} Usage: hexcore ask "QUESTION"') from None


# ---------------------------------------------------------------------------------------------- chat


@click.command("chat")
@click.option(
    "--expert", "-e", "experts", multiple=True, type=EXPERT_CHOICE, help="Always answer as this expert."
)
@click.option(
    "--max-new-tokens", type=click.IntRange(1, 4096), default=None, help="Cap each answer's length."
)
@click.option(
    "--stream/--no-stream", default=None, help="Stream answers (default: when stdout is a terminal)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
def chat_command(
    experts: tuple[str, ...], max_new_tokens: int | None, stream: bool | None, quiet: bool
) -> None:
    """A multi-turn conversation in the terminal; follow-up questions reuse the conversation's cache."""
    fixed = tuple(Expert(e.lower()) for e in experts) or None
    streaming = _stream_default(stream, False)
    engine = open_engine(load_settings(), quiet)
    run_or_exit(_chat(engine, fixed, max_new_tokens, streaming, sys.stdin.readline))


async def _chat(
    engine: LocalEngine,
    experts: tuple[Expert, ...] | None,
    max_new_tokens: int | None,
    streaming: bool,
    read_line: Callable[[], str],
) -> None:
    from engine.errors import EngineDead, EngineError

    out = sys.stdout
    session = _new_session_id()
    try:
        await engine.start()
        click.echo(CHAT_HELP)
        while True:
            out.write("> ")
            out.flush()
            line = await asyncio.to_thread(read_line)
            if not line:  # end of input
                out.write("\n")
                return
            text = line.strip()
            if not text:
                continue
            if text.lower() in ("/quit", "/exit", "/q"):
                return
            if text.lower() == "/new":
                await engine.end_session(session)
                session = _new_session_id()
                click.echo("(new conversation)")
                continue
            if text.startswith("/"):
                click.echo(CHAT_HELP)
                continue
            request = AnswerRequest(text, experts=experts, session_id=session, max_new_tokens=max_new_tokens)
            try:
                answer = await _answer(engine, request, out, streaming)
            except EngineDead:
                raise
            except EngineError as exc:  # one failed turn does not end the conversation
                click.echo(f"error: {exc}", err=True)
                continue
            if not streaming:
                click.echo(format_answer(answer, bold=sys.stdout.isatty()))
            out.write("\n")
    finally:
        await engine.close()


def _new_session_id() -> str:
    return f"cli-chat-{uuid.uuid4().hex[:12]}"
