"""The answer pipeline on the real knowledge base, router and tokenizer (no language model needed).

Route -> retrieve -> assemble -> prompt, then the answer: it cites exactly the passages in the prompt, with
the rules release, and the grounding guard removes rule numbers those passages do not back.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from engine.api import AnswerRequest, Expert
from engine.errors import AdapterError, InvalidRequest
from engine.experts import plan_experts
from engine.grounding import UNVERIFIED
from engine.pipeline import MAX_QUESTION_CHARS, NO_PROSE, NOT_FOUND, AnswerPipeline, validate_request
from engine.prompts import EXPERT_INSTRUCTIONS, next_history

RELEASE = "2026-01-16"
BUDGET = 400


# ---------------------------------------------------------------------------------------------- validation


def test_validate_strips_and_fills_the_token_budget() -> None:
    request = validate_request(AnswerRequest("  How does trample work?  "), default_max_new_tokens=77)
    assert request.question == "How does trample work?"
    assert request.max_new_tokens == 77
    assert request.experts is None


@pytest.mark.parametrize(
    "request_",
    [
        AnswerRequest(""),
        AnswerRequest("   \n "),
        AnswerRequest("x" * (MAX_QUESTION_CHARS + 1)),
        AnswerRequest("ok?", max_new_tokens=0),
        AnswerRequest("ok?", max_new_tokens=5000),
        AnswerRequest("ok?", experts=("wizard",)),  # type: ignore[arg-type]
        AnswerRequest("Comment fonctionne le piétinement quand le bloqueur meurt ?"),
    ],
)
def test_validate_rejects(request_: AnswerRequest) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_request(request_, default_max_new_tokens=24)
    assert info.value.user_message  # a message fit to show the user


def test_validate_dedupes_experts_and_accepts_names() -> None:
    request = validate_request(
        AnswerRequest("ok?", experts=("teach", Expert.TEACH, Expert.REASON)),  # type: ignore[arg-type]
        default_max_new_tokens=24,
    )
    assert request.experts == (Expert.TEACH, Expert.REASON)


# ---------------------------------------------------------------------------------------------- real parts


@pytest.fixture(scope="module")
def pipeline(real_engine_settings) -> AnswerPipeline:
    from engine.model_loader import load_embedded_tokenizer
    from engine.router import load_or_train_router
    from knowledge.base import KnowledgeBase
    from knowledge.embeddings import get_embedder

    settings = real_engine_settings(context_tokens=BUDGET)
    kb = KnowledgeBase.load(settings)
    router = load_or_train_router(settings.paths.state_dir, get_embedder(), 0.4)
    tokenizer = load_embedded_tokenizer(settings.paths)
    return AnswerPipeline(kb, router, tokenizer, context_tokens=BUDGET)


def prepare(pipeline: AnswerPipeline, question: str, **kwargs: Any):
    request = validate_request(AnswerRequest(question, **kwargs), default_max_new_tokens=24)
    return pipeline.prepare(request)


@pytest.mark.slow
def test_trample_cites_the_trample_rules_verbatim_under_the_budget(pipeline: AnswerPipeline) -> None:
    turn = prepare(pipeline, "How does trample work?")
    numbers = [p.citation.id for p in turn.passages if p.citation.kind == "rule"]
    assert any(n.startswith("702.19") for n in numbers), numbers
    assert turn.routed and turn.experts and set(turn.scores) == set(Expert)
    assert pipeline.count_tokens(turn.context.text) <= BUDGET
    prompt = pipeline.tokenizer.decode(turn.input_ids)
    book = pipeline.knowledge.book
    for passage in turn.passages:
        assert passage.text in prompt  # placed whole, never cut
        if passage.citation.kind == "rule":
            assert passage.citation.release == RELEASE
            assert passage.text == book.get(passage.citation.id).full_text()  # verbatim rule text
    assert "How does trample work?" in prompt
    assert {"route", "retrieve", "assemble", "queue"} <= set(turn.timings_ms)


@pytest.mark.slow
def test_fixed_expert_is_used_and_shapes_the_prompt(pipeline: AnswerPipeline) -> None:
    turn = prepare(pipeline, "How does trample work?", experts=(Expert.TEACH,))
    assert turn.experts == [Expert.TEACH] and not turn.routed
    assert turn.messages[0]["role"] == "system"
    assert EXPERT_INSTRUCTIONS[Expert.TEACH] in turn.messages[0]["content"]
    assert EXPERT_INSTRUCTIONS[Expert.REASON] not in turn.messages[0]["content"]


@pytest.mark.slow
def test_unavailable_experts(pipeline: AnswerPipeline) -> None:
    request = validate_request(AnswerRequest("What is trample?", experts=(Expert.TEACH,)), 24)
    with pytest.raises(AdapterError) as info:
        pipeline.prepare(request, planner=lambda r: plan_experts(r, {Expert.EXPLAIN}, can_fuse=True))
    assert info.value.expert == "teach"
    nothing_served = functools.partial(plan_experts, served=set(), can_fuse=True)
    routed = pipeline.prepare(validate_request(AnswerRequest("What is trample?"), 24), planner=nothing_served)
    assert len(routed.experts) == 1 and routed.adapters == [
        None
    ]  # the router's best expert, on the base model


@pytest.mark.slow
def test_answer_cites_exactly_the_prompt_passages_and_drops_invented_rules(pipeline: AnswerPipeline) -> None:
    turn = prepare(pipeline, "How does trample work?")
    cited = next(p.citation.id for p in turn.passages if p.citation.kind == "rule")
    text = f"It assigns lethal damage first (CR {cited}), then the rest (CR 613.7). See rule 999.1 too."
    answer = pipeline.finish(turn, text, prefill_ms=5.0, generate_ms=7.0, generated_tokens=20)
    assert answer.passages == turn.passages
    assert answer.citations == [p.citation for p in turn.passages]
    prose = answer.text if answer.prose_shown else answer.draft
    assert prose.startswith(turn.opening) and f"(CR {cited})" in prose
    assert "613.7" not in prose and "999.1" not in prose and UNVERIFIED in prose
    assert cited in answer.text_cites
    assert not answer.prose_shown and answer.support == "cites a rule that was not quoted"
    assert answer.generated_tokens == 20 and answer.experts == turn.experts
    assert {"route", "retrieve", "lead", "assemble", "prefill", "generate", "total"} <= set(answer.timings_ms)
    data = answer.to_json()
    assert [c["id"] for c in data["citations"]] == [p.citation.id for p in turn.passages]
    assert all(c["text"] == p.text for c, p in zip(data["citations"], turn.passages, strict=True))
    assert data["lead"]["id"] == turn.lead.passage.citation.id and data["prose_shown"] is False


@pytest.mark.slow
def test_the_deciding_rule_leads_the_prompt_and_the_answer(pipeline: AnswerPipeline) -> None:
    turn = prepare(pipeline, "Can a creature with defender attack?")
    assert turn.lead is not None and turn.lead.passage.citation.id == "702.3b"
    assert turn.passages[0] == turn.lead.passage  # first in the prompt too
    assert turn.lead.sentence == "A creature with defender can’t attack."
    assert turn.opening == "Rule 702.3b says that"
    assert pipeline.tokenizer.decode(turn.input_ids).endswith("assistant\nRule 702.3b says that")
    trample = prepare(pipeline, "How does trample work when the blocker dies?")
    assert trample.lead is not None and trample.lead.passage.citation.id.startswith("702.19")
    assert trample.lead.passage.citation.id != "702.19"  # a rule that says something, never the heading
    data = pipeline.finish(turn, " x", prefill_ms=1, generate_ms=1, generated_tokens=1).to_json()
    assert data["lead"] == {
        "id": "702.3b",
        "kind": "rule",
        "release": RELEASE,
        "text": turn.lead.passage.text,
        "sentence": turn.lead.sentence,
        "score": round(turn.lead.score, 4),
    }


@pytest.mark.slow
def test_prose_that_restates_the_rule_is_shown_and_a_bare_verdict_is_not(pipeline: AnswerPipeline) -> None:
    turn = prepare(pipeline, "Can a creature with defender attack?")
    assert turn.lead is not None
    restated = f" {turn.lead.sentence[0].lower()}{turn.lead.sentence[1:]}"
    shown = pipeline.finish(turn, restated, prefill_ms=1.0, generate_ms=1.0, generated_tokens=9)
    assert shown.prose_shown and shown.text == turn.opening + restated and shown.support == "supported"
    assert shown.text_cites == [turn.lead.passage.citation.id] and shown.draft is None
    bare = pipeline.finish(
        turn, " yes. The answer is no.", prefill_ms=1.0, generate_ms=1.0, generated_tokens=5
    )
    assert not bare.prose_shown and bare.text == NO_PROSE  # never shown, never rewritten...
    assert bare.draft == f"{turn.opening} yes. The answer is no."  # ...but kept for evaluation
    assert bare.lead == turn.lead and bare.passages  # the quoted rules still answer it


@pytest.mark.slow
def test_a_question_no_rule_is_about_quotes_nothing(pipeline: AnswerPipeline) -> None:
    turn = prepare(pipeline, "How tall is Mount Everest?")
    assert turn.lead is None and not turn.generates and turn.passages == [] and turn.opening == ""
    answer = pipeline.finish(turn, "", prefill_ms=0.0, generate_ms=0.0, generated_tokens=0)
    assert answer.text == NOT_FOUND and "/rule" in answer.text and "/card" in answer.text
    assert answer.citations == [] and answer.lead is None and not answer.prose_shown


@pytest.mark.slow
def test_second_turn_repeats_the_first_verbatim(pipeline: AnswerPipeline) -> None:
    first = prepare(pipeline, "How does trample work?", experts=(Expert.EXPLAIN,), session_id="s1")
    history = next_history(first.messages, first.opening + " excess damage goes to the player.")
    request = validate_request(
        AnswerRequest("And with deathtouch?", experts=(Expert.EXPLAIN,), session_id="s1"), 24
    )
    second = pipeline.prepare(request, history)
    # The KV session's reusable prefix: the first prompt and its opening, as the model saw them.
    assert second.input_ids[: len(first.input_ids)] == first.input_ids
    assert second.messages[1:3] == history
    # A short follow-up is retrieved together with the previous question.
    assert pipeline.retrieval_query("And with deathtouch?", history).startswith("How does trample work?")
    assert pipeline.retrieval_query("A long question that stands on its own two feet here?", history) == (
        "A long question that stands on its own two feet here?"
    )


# ---------------------------------------------------------------------------------------------- calculator


@pytest.mark.slow
def test_a_board_question_is_answered_by_the_calculator_with_its_rules_quoted(
    pipeline: AnswerPipeline,
) -> None:
    turn = prepare(pipeline, "A 6/6 trampler is blocked by a 3/3, how much damage do I take?")
    assert turn.calculated is not None and not turn.generates and turn.opening == ""
    assert turn.lead is not None and turn.lead.passage.citation.id == "702.19b"
    assert [p.citation.id for p in turn.passages] == list(turn.calculated.solution.rules)[
        : len(turn.passages)
    ]
    answer = pipeline.finish(turn, "", prefill_ms=0.0, generate_ms=0.0, generated_tokens=0)
    assert answer.verdict == "You take 3 damage." and answer.to_json()["verdict"] == "You take 3 damage."
    assert "(CR 702.19b, 510.1c)" in answer.text and answer.support == "calculator"
    assert not answer.prose_shown and answer.draft is None and "702.19b" in answer.text_cites
    assert "calculator" in answer.timings_ms


@pytest.mark.slow
def test_a_follow_up_in_the_same_conversation_changes_the_board(pipeline: AnswerPipeline) -> None:
    first = prepare(
        pipeline,
        "My 3/3 attacks and is blocked by a 2/2. How much damage does the 2/2 take?",
        session_id="calc-1",
    )
    assert first.calculated is not None
    follow = prepare(pipeline, "and if it also had lifelink?", session_id="calc-1")
    assert follow.calculated is not None and "lifelink" in follow.fixed_text.lower()
    assert prepare(pipeline, "and if it also had lifelink?", session_id="calc-other").calculated is None


@pytest.mark.slow
def test_an_impossible_board_gets_the_calculators_message(pipeline: AnswerPipeline) -> None:
    with pytest.raises(InvalidRequest) as info:
        prepare(pipeline, "My -1/3 creature attacks and is blocked by a 2/2, what happens?")
    assert "-1/3" in info.value.user_message
