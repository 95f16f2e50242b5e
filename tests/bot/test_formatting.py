"""Splitting at Discord's limits without breaking code fences, verbatim quoting, inert mentions."""

from __future__ import annotations

import discord
import pytest

from bot import formatting, limits
from engine.api import Answer, Expert
from knowledge.errors import UnknownCard, UnknownRule
from knowledge.models import Citation, Passage


def unsplit(chunks: list[str]) -> str:
    """Rejoin chunks, dropping the fences the splitter added, and compare without whitespace."""
    out = []
    for i, chunk in enumerate(chunks):
        lines = chunk.split("\n")
        if i > 0 and lines[0].startswith(formatting.FENCE) and chunks[i - 1].endswith(formatting.FENCE):
            lines = lines[1:]
        if (
            i < len(chunks) - 1
            and lines[-1] == formatting.FENCE
            and chunks[i + 1].startswith(formatting.FENCE)
        ):
            lines = lines[:-1]
        out.append("\n".join(lines))
    return "".join("".join(out).split())


@pytest.mark.parametrize("limit", [100, 2000, 4096])
def test_split_keeps_code_fences_balanced(limit):
    code = "\n".join(f"    line {i} = {'x' * (i % 40)}" for i in range(300))
    text = f"Intro paragraph.\n\n```python\n{code}\n```\n\nAfter the code. " + "word " * 800
    chunks = formatting.split_text(text, limit)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk) <= limit
        assert chunk.count("```") % 2 == 0, chunk
    reopened = [c for c in chunks if c.startswith("```python")]
    assert len(reopened) >= 2, "the code block is reopened with its language"
    assert unsplit(chunks) == "".join(text.split())


def test_split_prefers_paragraphs_and_words():
    text = ("alpha " * 30).strip() + "\n\n" + ("beta " * 30).strip()
    chunks = formatting.split_text(text, 200)
    assert chunks[0].endswith("alpha") and chunks[1].startswith("beta")
    assert all(not c.startswith(" ") for c in chunks)
    assert formatting.split_text("short", 100) == ["short"]
    hard = formatting.split_text("x" * 250, 100)
    assert [len(c) for c in hard] == [96, 96, 58], "hard cuts keep room to close a fence"


def test_paginate_content_marks_continuations_and_neutralises_mentions():
    pages = formatting.paginate_content("@everyone " + "spam " * 900)
    assert len(pages) == 3 and all(len(p) <= limits.CONTENT_LIMIT for p in pages)
    assert "@everyone" not in pages[0] and "@\u200beveryone" in pages[0]
    assert pages[1].startswith(f"*{formatting.CONTINUED}*") and not pages[0].startswith("*(")


def test_stream_preview_is_bounded_and_balanced():
    preview = formatting.stream_preview("```py\n" + "x = 1\n" * 1000)
    assert len(preview) <= limits.CONTENT_LIMIT
    assert preview.count("```") % 2 == 0 and preview.endswith(formatting.CURSOR)
    assert formatting.stream_preview("") == "…" + formatting.CURSOR


def test_verbatim_escapes_markdown_but_renders_the_same():
    text = "Wolf in ________ Clothing costs 1+* and <@123456789012345678>"
    shown = formatting.verbatim(text)
    assert "\\_\\_" in shown and "\\*" in shown and "<@\u200b1" in shown
    assert shown.replace("\\", "").replace("\u200b", "") == text


def _answer(text: str, passages: list[Passage]) -> Answer:
    return Answer("Q?", [Expert.EXPLAIN, Expert.TEACH], text, [p.citation for p in passages], passages)


def test_answer_embeds_cite_every_passage_with_release():
    passages = [
        Passage("rule:702.19b", "Rule text.", Citation("702.19b", "rule", "2026-01-16"), "702.19 Trample"),
        Passage("card:ponder", "Ponder {U}\nSorcery", Citation("Ponder", "card")),
    ]
    embeds = formatting.answer_embeds(_answer("Because.", passages))
    assert embeds[0].title == "Q?" and embeds[0].description == "Because."
    assert embeds[0].footer.text == "Experts: explain, teach · Comprehensive Rules 2026-01-16"
    fields = [(f.name, f.value) for f in embeds[1].fields]
    assert fields == [
        ("CR 702.19b (2026-01-16) · 702.19 Trample", "Rule text."),
        ("Ponder", "Ponder {U}\nSorcery"),
    ]


def test_an_uncited_summary_shows_its_caution_under_the_text():
    passages = [Passage("rule:117.7", "Rule text.", Citation("117.7", "rule", "2026-01-16"))]
    answer = _answer("The answer is no.", passages)
    answer.note = "This summary cites no rule."
    embeds = formatting.answer_embeds(answer)
    assert embeds[0].description == "The answer is no.\n\n*This summary cites no rule.*"
    assert formatting.answer_embeds(_answer("Yes (CR 117.7).", passages))[0].description == "Yes (CR 117.7)."


def test_long_passage_split_over_fields_and_embeds():
    long_rule = " ".join(f"sentence {i}." for i in range(2000))  # ~25,000 characters
    passages = [Passage(f"rule:1.{i}", long_rule, Citation(f"1.{i}", "rule", "2026-01-16")) for i in range(2)]
    pages = formatting.answer_pages(_answer("x", passages))
    for page in pages:
        assert len(page.embeds) <= limits.EMBEDS_PER_MESSAGE
        assert sum(len(e) for e in page.embeds) <= limits.EMBED_TOTAL_LIMIT
        for embed in page.embeds:
            assert len(embed.fields) <= limits.EMBED_FIELDS_LIMIT
            assert all(len(f.value) <= limits.EMBED_FIELD_VALUE_LIMIT for f in embed.fields)
    values = [f for p in pages for e in p.embeds for f in e.fields]
    assert values[1].name == f"CR 1.0 (2026-01-16) {formatting.CONTINUED}"
    rebuilt = " ".join(f.value for f in values if f.name.startswith("CR 1.0"))
    assert "".join(rebuilt.split()) == "".join(long_rule.split()), "nothing lost"
    assert pages[0].embeds[-1].author.name == "continued below ↓"


def test_pack_respects_the_total_and_count_limits():
    embeds = [discord.Embed(description="x" * 2500) for _ in range(5)] + [
        discord.Embed(title="t") for _ in range(12)
    ]
    pages = formatting.pack(embeds)
    assert [len(p.embeds) for p in pages] == [2, 2, 10, 3]  # 2 x 2500 per message; then 10 at most


def test_unknown_messages():
    assert formatting.unknown_rule_message(UnknownRule("999.9", ["999.1"])) == (
        "There is no rule 999.9 in the Comprehensive Rules. Nearest: 999.1."
    )
    assert "Did you mean: Ponder?" in formatting.unknown_card_message(UnknownCard("Pondr", ["Ponder"]))
    assert "@\u200beveryone" in formatting.unknown_card_message(UnknownCard("@everyone", []))


# ------------------------------------------------------------------------------------------- rule-first


def _lead_answer(**kwargs) -> Answer:
    from knowledge.lead import Lead

    text = "If an attacking creature with trample is blocked, it assigns lethal damage first. Then the rest."
    lead_passage = Passage("rule:702.19b", text, Citation("702.19b", "rule", "2026-01-16"), "702.19 Trample")
    other = Passage("rule:702.19a", "Trample is a static ability.", Citation("702.19a", "rule", "2026-01-16"))
    start = text.index("Then")
    return Answer(
        "q", [Expert.REASON], kwargs.pop("text", "Prose."), [lead_passage.citation, other.citation],
        passages=[lead_passage, other], lead=Lead(lead_passage, start, len(text), 0.7), **kwargs,
    )  # fmt: skip


def test_the_lead_rule_comes_first_with_its_sentence_in_bold_and_is_not_repeated_below():
    embeds = formatting.answer_embeds(_lead_answer())
    description = embeds[0].description
    assert description.startswith("**CR 702.19b (2026-01-16) · 702.19 Trample**\n")
    assert "**Then the rest.**" in description and description.index("**Then") < description.index("Prose.")
    fields = [f for e in embeds for f in e.fields]
    assert [f.name for f in fields] == ["CR 702.19a (2026-01-16)"]  # only the other sources below
    assert embeds[1].title == "Other sources"


def test_a_calculator_verdict_leads_before_the_rule():
    embeds = formatting.answer_embeds(_lead_answer(verdict="You take 3 damage.", text="- step (CR 702.19b)"))
    description = embeds[0].description
    assert description.startswith("**You take 3 damage.**\n\n**CR 702.19b")
    assert description.endswith("- step (CR 702.19b)")


def test_progress_preview_shows_the_rule_and_never_prose():
    answer = _lead_answer()
    preview = formatting.progress_preview(answer.lead, 12)
    assert preview.startswith("**CR 702.19b") and "(12 words so far)" in preview
    assert len(preview) <= limits.STREAM_PREVIEW_CHARS
    assert formatting.progress_preview(None, 0) == formatting.CHECKING
