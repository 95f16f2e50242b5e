"""Context assembly: whole passages only, in relevance order, under an exact token budget."""

from __future__ import annotations

from knowledge.context import assemble_context, citation_label, render_passage
from knowledge.models import Citation, Passage, RetrievalResult


def words(text: str) -> int:
    """A real (if simple) tokenizer: whitespace words."""
    return len(text.split())


def rule(number: str, text: str, title: str | None = None) -> Passage:
    return Passage(f"rule:{number}", text, Citation(number, "rule", "2026-01-16"), title)


def result(p: Passage, score: float = 1.0) -> RetrievalResult:
    return RetrievalResult(p, score, frozenset({"bm25"}))


TRAMPLE_B = rule(
    "702.19b", "The controller of an attacking creature with trample first assigns damage.", "702.19 Trample"
)
CARD = Passage(
    "card:ponder", "Ponder {U}\nSorcery\nLook at the top three cards.", Citation("Ponder", "card"), "Ponder"
)


def test_labels_and_rendering() -> None:
    assert citation_label(TRAMPLE_B) == "CR 702.19b (2026-01-16)"
    assert citation_label(CARD) == "Card: Ponder"
    assert render_passage(TRAMPLE_B).startswith("[CR 702.19b (2026-01-16) | 702.19 Trample] The controller")
    assert render_passage(CARD) == "[Card: Ponder] Ponder {U}\nSorcery\nLook at the top three cards."


def test_all_fit_in_order_with_exact_token_count() -> None:
    a = rule("100.1", "one two three")
    b = rule("100.2", "four five")
    ctx = assemble_context([result(a), result(b)], 1000, words)
    assert ctx.passages == [a, b]
    assert ctx.text == "[CR 100.1 (2026-01-16)] one two three\n\n[CR 100.2 (2026-01-16)] four five"
    assert ctx.tokens == words(ctx.text)
    assert ctx.skipped == []


def test_a_passage_that_does_not_fit_is_skipped_whole_and_smaller_ones_still_fit() -> None:
    small1 = rule("100.1", "a b c")
    big = rule("100.2", " ".join(["word"] * 50))
    small2 = rule("100.3", "d e")
    budget = words(render_passage(small1)) + words(render_passage(small2))
    ctx = assemble_context([result(small1), result(big), result(small2)], budget, words)
    assert ctx.passages == [small1, small2]
    assert ctx.skipped == ["rule:100.2"]
    assert "word" not in ctx.text  # never a half rule
    assert ctx.tokens <= budget


def test_every_included_passage_is_complete() -> None:
    passages = [rule(f"100.{i}", " ".join(f"w{i}x{j}" for j in range(i * 7 % 23 + 1))) for i in range(1, 30)]
    ctx = assemble_context([result(p) for p in passages], 60, words)
    assert ctx.passages
    for p in ctx.passages:
        assert render_passage(p) in ctx.text.split("\n\n")
    left_out = [p for p in passages if p not in ctx.passages]
    for p in left_out:
        assert p.text not in ctx.text
    assert ctx.tokens == words(ctx.text) <= 60


def test_duplicates_are_dropped_and_plain_passages_accepted() -> None:
    a = rule("100.1", "x y")
    ctx = assemble_context([a, result(a), a], 100, words)
    assert ctx.passages == [a]


def test_zero_budget_gives_empty_context() -> None:
    ctx = assemble_context([result(TRAMPLE_B)], 0, words)
    assert ctx.text == "" and ctx.passages == [] and ctx.skipped == ["rule:702.19b"]


def test_max_passages() -> None:
    ps = [rule(f"100.{i}", "x") for i in range(1, 6)]
    assert len(assemble_context(ps, 1000, words, max_passages=2).passages) == 2
