"""The answer pipeline on the real knowledge base, router and tokenizer (no language model needed).

Route -> retrieve -> assemble -> prompt, then the answer: it cites exactly the passages in the prompt, with
the rules release, and the grounding guard removes rule numbers those passages do not back.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.api import AnswerRequest, Expert
from engine.errors import AdapterError, InvalidRequest
from engine.grounding import UNVERIFIED
from engine.pipeline import EMPTY_ANSWER, MAX_QUESTION_CHARS, UNCITED_NOTE, AnswerPipeline, validate_request
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
        pipeline.prepare(request, available={Expert.EXPLAIN})
    assert info.value.expert == "teach"
    routed = pipeline.prepare(validate_request(AnswerRequest("What is trample?"), 24), available=set())
    assert len(routed.experts) == 1  # nothing served: the router's best expert, on the base model


@pytest.mark.slow
def test_answer_cites_exactly_the_prompt_passages_and_drops_invented_rules(pipeline: AnswerPipeline) -> None:
    turn = prepare(pipeline, "How does trample work?")
    cited = next(p.citation.id for p in turn.passages if p.citation.kind == "rule")
    text = f"It assigns lethal damage first (CR {cited}), then the rest (CR 613.7). See rule 999.1 too."
    answer = pipeline.finish(turn, text, prefill_ms=5.0, generate_ms=7.0, generated_tokens=20)
    assert answer.passages == turn.passages
    assert answer.citations == [p.citation for p in turn.passages]
    assert f"(CR {cited})" in answer.text
    assert "613.7" not in answer.text and "999.1" not in answer.text and UNVERIFIED in answer.text
    assert answer.text_cites == [cited] and answer.note is None  # it cites a quoted rule: no caution
    assert answer.generated_tokens == 20 and answer.experts == turn.experts
    assert {"route", "retrieve", "assemble", "prefill", "generate", "total"} <= set(answer.timings_ms)
    data = answer.to_json()
    assert [c["id"] for c in data["citations"]] == [p.citation.id for p in turn.passages]
    assert all(c["text"] == p.text for c, p in zip(data["citations"], turn.passages, strict=True))


@pytest.mark.slow
def test_empty_generation_falls_back_to_the_quoted_passages(pipeline: AnswerPipeline) -> None:
    turn = prepare(pipeline, "What is deathtouch?")
    answer = pipeline.finish(turn, "  (CR 999.9)  ", prefill_ms=1.0, generate_ms=1.0, generated_tokens=3)
    assert answer.text == EMPTY_ANSWER
    assert answer.passages  # the passages still answer it
    assert answer.note is None  # the fallback already points at the quoted passages


@pytest.mark.slow
def test_prose_citing_no_quoted_rule_carries_a_caution(pipeline: AnswerPipeline) -> None:
    turn = prepare(pipeline, "Can I respond to a spell by casting an instant?")
    answer = pipeline.finish(turn, "The answer is no.", prefill_ms=1.0, generate_ms=1.0, generated_tokens=5)
    assert answer.text == "The answer is no."  # shown, never rewritten...
    assert answer.text_cites == [] and answer.note == UNCITED_NOTE  # ...but flagged as unchecked
    assert answer.to_json()["note"] == UNCITED_NOTE
    invented = pipeline.finish(turn, "No (CR 999.1).", prefill_ms=1.0, generate_ms=1.0, generated_tokens=5)
    assert invented.note == UNCITED_NOTE  # an invented rule number is no citation either


@pytest.mark.slow
def test_second_turn_repeats_the_first_verbatim(pipeline: AnswerPipeline) -> None:
    first = prepare(pipeline, "How does trample work?", experts=(Expert.EXPLAIN,), session_id="s1")
    history = next_history(first.messages, "Excess damage goes to the player.")
    request = validate_request(
        AnswerRequest("And with deathtouch?", experts=(Expert.EXPLAIN,), session_id="s1"), 24
    )
    second = pipeline.prepare(request, history)
    assert second.input_ids[: len(first.input_ids)] == first.input_ids  # the KV session's reusable prefix
    assert second.messages[1:3] == history
    # A short follow-up is retrieved together with the previous question.
    assert pipeline.retrieval_query("And with deathtouch?", history).startswith("How does trample work?")
    assert pipeline.retrieval_query("A long question that stands on its own two feet here?", history) == (
        "A long question that stands on its own two feet here?"
    )
