"""Prompts: expert instructions, turn layout (reusable prefixes), ChatML identical to the embedded template,
and training text identical to what the model sees when serving."""

from __future__ import annotations

from typing import Any

import pytest

from engine.api import Expert
from engine.prompts import (
    BASE_INSTRUCTIONS,
    EXPERT_INSTRUCTIONS,
    IM_END,
    build_messages,
    encode_messages,
    format_example,
    format_prompt,
    next_history,
    render_chatml,
    render_prompt,
    system_prompt,
    trim_history,
    user_message,
)

CONTEXT = "702.19b If an attacking creature with trample is blocked, excess damage goes to the player."


def test_every_expert_has_its_own_grounded_system_prompt() -> None:
    prompts = {e: system_prompt(e) for e in Expert}
    assert set(EXPERT_INSTRUCTIONS) == set(Expert)
    assert len(set(prompts.values())) == len(Expert)
    for expert, text in prompts.items():
        assert text.startswith(BASE_INSTRUCTIONS) and EXPERT_INSTRUCTIONS[expert] in text
    assert "only from the rules and cards quoted" in BASE_INSTRUCTIONS and "Cite" in BASE_INSTRUCTIONS
    assert system_prompt("teach") == prompts[Expert.TEACH]  # plain strings work too


def test_several_experts_combine_in_order_without_repeats() -> None:
    text = system_prompt([Expert.PREDICT, "reason", Expert.PREDICT])
    assert text.index(EXPERT_INSTRUCTIONS[Expert.PREDICT]) < text.index(EXPERT_INSTRUCTIONS[Expert.REASON])
    assert text.count(EXPERT_INSTRUCTIONS[Expert.PREDICT]) == 1
    with pytest.raises(ValueError):
        system_prompt([])
    with pytest.raises(ValueError):
        system_prompt("judge")


def test_turn_layout_puts_this_turns_context_in_its_own_user_message() -> None:
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}]
    messages = build_messages(Expert.EXPLAIN, "  What is trample? ", CONTEXT, history)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1:3] == history
    assert messages[-1]["content"] == f"Rules and cards:\n{CONTEXT}\n\nQuestion: What is trample?"
    assert "No rules or cards" in user_message("Q?", "   ")
    with pytest.raises(ValueError, match="history"):
        build_messages("explain", "Q?", "", [{"role": "system", "content": "sneaky"}])


def test_next_history_and_trim_history() -> None:
    first = build_messages("reason", "Q1", "C1")
    history = next_history(first, "A1")
    assert history == [first[1], {"role": "assistant", "content": "A1"}]
    second = build_messages("reason", "Q2", "C2", history)
    history = next_history(second, "A2")
    assert [m["content"] for m in history[::2]] == [first[1]["content"], second[-1]["content"]]
    assert trim_history(history, 10_000) == history
    trimmed = trim_history(history, len(history[2]["content"]) + len("A2"))
    assert trimmed == history[2:]  # the oldest whole turn went
    assert trim_history(history, 1) == []


def test_chatml_rendering_equals_the_embedded_chat_template(embedded_tokenizer: Any) -> None:
    history = next_history(
        build_messages("teach", "What is ward?", "702.21a Ward is a triggered ability."), "Ward taxes."
    )
    for messages in (
        build_messages("teach", "Why?", CONTEXT),
        build_messages(["reason", "predict"], "And?", "", history),
    ):
        assert render_chatml(messages) == render_prompt(embedded_tokenizer, messages)
        assert render_chatml(messages, add_generation_prompt=False) == embedded_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=False
        )


def test_encoding_has_no_extra_bos_and_ends_at_the_assistant_header(embedded_tokenizer: Any) -> None:
    messages = build_messages("explain", "What is trample?", CONTEXT)
    ids = encode_messages(embedded_tokenizer, messages)
    header = embedded_tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[:1] == embedded_tokenizer.convert_tokens_to_ids(["<|im_start|>"])
    assert ids[-len(header) :] == header
    assert embedded_tokenizer.decode(ids) == render_chatml(messages)


def test_a_follow_up_prompt_starts_with_the_previous_prompt_and_answer(embedded_tokenizer: Any) -> None:
    """What makes session reuse work: turn 2's tokens extend turn 1's prompt + generated answer."""
    first = build_messages("reason", "What does trample do?", CONTEXT)
    first_ids = encode_messages(embedded_tokenizer, first)
    answer = "Excess damage goes to the player (CR 702.19b)."
    answer_ids = embedded_tokenizer(answer, add_special_tokens=False)["input_ids"]
    second = build_messages(
        "reason", "And with deathtouch?", "702.2c Deathtouch.", next_history(first, answer)
    )
    second_ids = encode_messages(embedded_tokenizer, second)
    assert second_ids[: len(first_ids) + len(answer_ids)] == first_ids + answer_ids


def test_training_text_is_the_serving_prompt_plus_the_answer(embedded_tokenizer: Any) -> None:
    prompt = format_prompt(Expert.TEACH, "What is ward?", CONTEXT)
    example = format_example(Expert.TEACH, "What is ward?", CONTEXT, "  Ward makes spells cost more.\n")
    assert example == prompt + "Ward makes spells cost more." + f"{IM_END}\n"
    assert prompt == render_prompt(embedded_tokenizer, build_messages(Expert.TEACH, "What is ward?", CONTEXT))
    full = build_messages(Expert.TEACH, "What is ward?", CONTEXT) + [
        {"role": "assistant", "content": "Ward makes spells cost more."}
    ]
    assert example == embedded_tokenizer.apply_chat_template(full, tokenize=False)
