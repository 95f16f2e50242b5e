"""The one formatter every outbound message goes through.

Model-written text has its mentions neutralised (on top of ``AllowedMentions.none()``) and is split at
Discord's limits without breaking code fences; continuations are marked. Rule and card text is quoted
verbatim: markdown is escaped so Discord renders exactly the official wording.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import discord

from bot import limits
from engine.api import Answer
from knowledge.errors import UnknownCard, UnknownRule
from knowledge.lead import Lead
from knowledge.models import Card, Passage, Rule

FENCE = "```"
CONTINUED = "(continued)"
ANSWER_COLOUR = discord.Colour.blurple()
SOURCE_COLOUR = discord.Colour.dark_teal()
CARD_COLOUR = discord.Colour.dark_gold()
CURSOR = " ▌"


@dataclass(slots=True)
class Page:
    """One Discord message: optional content and up to 10 embeds within the 6000-character total."""

    content: str | None = None
    embeds: list[discord.Embed] = field(default_factory=list)


def neutralize_mentions(text: str) -> str:
    """``@everyone``, ``@here``, user and role mentions made inert (a zero-width space after the ``@``)."""
    return discord.utils.escape_mentions(text)


def verbatim(text: str) -> str:
    """Official text as Discord will render it unchanged: markdown escaped, mentions inert."""
    return neutralize_mentions(discord.utils.escape_markdown(text))


def truncate(text: str, limit: int, marker: str = "…") -> str:
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


# ----------------------------------------------------------------------------------------- splitting


def _cut_point(text: str, budget: int) -> int:
    """Where to cut ``text`` so the head fits ``budget``: a paragraph, line or word break if one is near."""
    window = text[: budget + 1]
    for sep in ("\n\n", "\n", " "):
        pos = window.rfind(sep, 0, budget)
        if pos >= budget // 3:  # do not leave a tiny head just to cut at a separator
            return pos + len(sep)
    return budget


def _fence_after(chunk: str, open_fence: str | None) -> str | None:
    """The fence line still open after ``chunk`` (``"```py"``), or None, given the one open before it."""
    for line in chunk.split("\n"):
        stripped = line.strip()
        if stripped.startswith(FENCE):
            open_fence = None if open_fence is not None else stripped
    return open_fence


def split_text(text: str, limit: int) -> list[str]:
    """Split into chunks of at most ``limit`` characters, never leaving a code fence open in a chunk.

    A chunk that ends inside a code block gets a closing fence, and the next chunk reopens it with the
    same language, so every chunk renders on its own.
    """
    if limit < 16:
        raise ValueError("limit too small to split with code fences")
    chunks: list[str] = []
    open_fence: str | None = None
    rest = text
    while rest:
        prefix = f"{open_fence}\n" if open_fence else ""
        if len(prefix) + len(rest) <= limit:
            chunk = prefix + rest
            rest = ""
        else:
            budget = limit - len(prefix) - len(FENCE) - 1  # room to close a fence we may cut inside
            cut = max(1, _cut_point(rest, budget))
            chunk = prefix + rest[:cut].rstrip("\n")
            rest = rest[cut:]
        open_fence = _fence_after(chunk[len(prefix) :], open_fence)
        if open_fence is not None and rest:
            chunk += f"\n{FENCE}"
        chunks.append(chunk)
    return chunks or [""]


def split_verbatim(text: str, limit: int) -> list[str]:
    """Split official text into chunks that still fit ``limit`` after escaping for Discord."""
    budget = limit
    while True:
        pieces = [verbatim(p) for p in split_text(text, budget)]
        longest = max(len(p) for p in pieces)
        if longest <= limit:
            return pieces
        budget -= max(longest - limit, 8)


def paginate_content(text: str, limit: int = limits.CONTENT_LIMIT) -> list[str]:
    """Model text as plain messages: mentions neutralised, split, later pages marked as continuations."""
    marker = f"*{CONTINUED}*\n"
    pieces = split_text(neutralize_mentions(text), limit - len(marker))
    return [p if i == 0 else marker + p for i, p in enumerate(pieces)]


def stream_preview(text: str) -> str:
    """What a streaming edit shows: the tail of the text so far, fences balanced, with a cursor."""
    text = neutralize_mentions(text)
    if len(text) > limits.STREAM_PREVIEW_CHARS:
        text = "…" + text[-limits.STREAM_PREVIEW_CHARS :]
    if text.count(FENCE) % 2:
        text += f"\n{FENCE}"
    return (text or "…") + CURSOR


# ------------------------------------------------------------------------------------------- packing


def pack(embeds: Iterable[discord.Embed]) -> list[Page]:
    """Group embeds into messages: at most 10 per message and 6000 characters in all."""
    pages: list[Page] = []
    current: list[discord.Embed] = []
    size = 0
    for embed in embeds:
        n = len(embed)
        if current and (size + n > limits.EMBED_TOTAL_LIMIT or len(current) >= limits.EMBEDS_PER_MESSAGE):
            pages.append(Page(embeds=current))
            current, size = [], 0
        current.append(embed)
        size += n
    if current:
        pages.append(Page(embeds=current))
    return pages


def _field_embeds(
    title: str, fields: Sequence[tuple[str, str]], colour: discord.Colour, *, budget: int = 5000
) -> list[discord.Embed]:
    """Fields spread over as many embeds as the 25-field and per-message size limits need."""
    embeds: list[discord.Embed] = []
    embed: discord.Embed | None = None
    for name, value in fields:
        name = truncate(name, limits.EMBED_FIELD_NAME_LIMIT)
        if (
            embed is None
            or len(embed.fields) >= limits.EMBED_FIELDS_LIMIT
            or len(embed) + len(name) + len(value) > budget
        ):
            heading = title if not embeds else f"{title} {CONTINUED}"
            embed = discord.Embed(title=heading, colour=colour)
            embeds.append(embed)
        embed.add_field(name=name, value=value, inline=False)
    return embeds


def passage_fields(label: str, text: str) -> list[tuple[str, str]]:
    """One passage as embed fields, split at the field limit, later parts marked as continued."""
    parts = split_verbatim(text, limits.EMBED_FIELD_VALUE_LIMIT)
    return [(label if i == 0 else f"{label} {CONTINUED}", part) for i, part in enumerate(parts)]


def citation_heading(passage: Passage) -> str:
    label = passage.citation.label()
    if passage.title and passage.title not in label:
        label = f"{label} · {passage.title}"
    return label


# ------------------------------------------------------------------------------------------- answers


CHECKING = "*Writing an explanation to check against the quoted rules…*"


def lead_block(lead: Lead) -> str:
    """The deciding rule for an embed: its label, then its text verbatim with the answering sentence in bold.

    Markdown in the rule text is escaped, so the only formatting is the highlight."""
    text, start, end = lead.passage.text, lead.start, lead.end
    escape = discord.utils.escape_markdown
    if (start, end) == (0, len(text)):
        body = escape(text)
    else:
        body = f"{escape(text[:start])}**{escape(text[start:end])}**{escape(text[end:])}"
    return f"**{citation_heading(lead.passage)}**\n{body}"


def progress_preview(lead: Lead | None, words: int) -> str:
    """What a streaming answer shows while the model writes: the deciding rule as soon as it is found, and
    how far the explanation (checked before it is shown) has got."""
    progress = f"{CHECKING} ({words} words so far)" if words else CHECKING
    if lead is None:
        return progress
    room = limits.STREAM_PREVIEW_CHARS - len(progress) - 2
    return f"{truncate(neutralize_mentions(lead_block(lead)), room)}\n\n{progress}"


def answer_body(answer: Answer) -> str:
    """The answer's description: the calculator's verdict when it answered, the deciding rule, then the
    checked prose (or why there is none, or the calculator's steps), and any note."""
    parts = [f"**{discord.utils.escape_markdown(answer.verdict)}**"] if answer.verdict else []
    if answer.lead:
        parts.append(lead_block(answer.lead))
    parts.append(answer.text.strip() or "(no answer text)")
    if answer.note:
        parts.append(f"*{answer.note}*")
    return "\n\n".join(parts)


def answer_embeds(answer: Answer, *, title: str | None = None) -> list[discord.Embed]:
    """The deciding rule, the answer text, then every other cited passage verbatim with its rule number and
    release."""
    experts = ", ".join(e.value for e in answer.experts) or "router"
    releases = sorted({c.release for c in answer.citations if c.release})
    footer = f"Experts: {experts}"
    if releases:
        footer += f" · Comprehensive Rules {', '.join(releases)}"
    heading = truncate(neutralize_mentions(title or answer.question), limits.EMBED_TITLE_LIMIT)
    embeds = []
    chunks = split_text(neutralize_mentions(answer_body(answer)), limits.EMBED_DESCRIPTION_LIMIT)
    for i, chunk in enumerate(chunks):
        head = heading if i == 0 else truncate(f"{heading} {CONTINUED}", limits.EMBED_TITLE_LIMIT)
        embed = discord.Embed(title=head, description=chunk, colour=ANSWER_COLOUR)
        if i == len(chunks) - 1:
            embed.set_footer(text=truncate(footer, limits.EMBED_FOOTER_LIMIT))
        embeds.append(embed)
    lead_key = answer.lead.passage.key if answer.lead else None
    passages = [p for p in answer.passages or [] if p.key != lead_key]
    fields = [f for p in passages for f in passage_fields(citation_heading(p), p.text)]
    if not answer.passages and answer.citations:  # citations without text: name them at least
        fields = [(c.label(), "(text not available)") for c in answer.citations]
    if fields:
        embeds.extend(_field_embeds("Other sources" if lead_key else "Sources", fields, SOURCE_COLOUR))
    return embeds


def answer_pages(answer: Answer, *, title: str | None = None) -> list[Page]:
    pages = pack(answer_embeds(answer, title=title))
    for i, page in enumerate(pages):
        if i < len(pages) - 1:
            page.embeds[-1].set_author(name="continued below ↓")
    return pages


# ------------------------------------------------------------------------------------------- lookups


def rule_pages(rule: Rule, children: Sequence[Rule], release: str) -> list[Page]:
    """A rule with its examples and sub-rules, verbatim, cited to the release."""
    head = f"CR {rule.number}"
    body = split_verbatim(rule.full_text(), limits.EMBED_DESCRIPTION_LIMIT)
    embeds = [
        discord.Embed(title=head if i == 0 else f"{head} {CONTINUED}", description=part, colour=SOURCE_COLOUR)
        for i, part in enumerate(body)
    ]
    fields = [f for child in children for f in passage_fields(child.number, child.full_text())]
    embeds.extend(_field_embeds(f"{head} sub-rules", fields, SOURCE_COLOUR))
    embeds[-1].set_footer(text=f"Comprehensive Rules, effective {release}")
    return pack(embeds)


def card_embed(card: Card) -> discord.Embed:
    """Every face of a card with its oracle text, verbatim."""
    parts = split_verbatim(card.oracle_block(), limits.EMBED_DESCRIPTION_LIMIT)
    embed = discord.Embed(
        title=truncate(card.name, limits.EMBED_TITLE_LIMIT),
        url=card.scryfall_uri,
        description=parts[0],
        colour=CARD_COLOUR,
    )
    for part in parts[1:]:  # only for absurdly long cards; fields keep it one embed
        embed.add_field(name=CONTINUED, value=truncate(part, limits.EMBED_FIELD_VALUE_LIMIT), inline=False)
    if card.image_uri:
        embed.set_thumbnail(url=card.image_uri)
    embed.set_footer(text="Oracle text")
    return embed


def unknown_rule_message(error: UnknownRule) -> str:
    text = f"There is no rule {error.number} in the Comprehensive Rules."
    if error.nearest:
        text += f" Nearest: {', '.join(error.nearest)}."
    return neutralize_mentions(text)


def unknown_card_message(error: UnknownCard) -> str:
    text = f"No card named “{error.name}”."
    if error.suggestions:
        text += f" Did you mean: {', '.join(error.suggestions)}?"
    return neutralize_mentions(discord.utils.escape_markdown(text))
