"""Tokenization with the loss on the answer only, shared with the serving prompt template."""

from __future__ import annotations

from typing import Any

import torch

from engine.prompts import IM_END, format_example, format_prompt
from tests.training.conftest import make_examples
from training.batching import IGNORE_INDEX, collate, encode_all, encode_example, nll_from_logits, token_nll


def test_only_the_answer_and_end_marker_are_targets(embedded_tokenizer: Any) -> None:
    example = make_examples(1)[0]
    encoded = encode_example(embedded_tokenizer, example, 512)
    assert encoded is not None
    prompt_len = sum(1 for x in encoded.labels if x == IGNORE_INDEX)
    # the masked part is exactly the serving prompt, token for token
    assert embedded_tokenizer.decode(encoded.input_ids[:prompt_len]) == format_prompt(
        "explain", example.question, example.context
    )
    targets = [x for x in encoded.labels if x != IGNORE_INDEX]
    assert embedded_tokenizer.decode(targets) == example.answer + IM_END
    assert embedded_tokenizer.decode(encoded.input_ids) + "\n" == format_example(
        "explain", example.question, example.context, example.answer
    )
    assert encoded.n_targets == len(targets)


def test_prompt_experts_override_and_length_limits(embedded_tokenizer: Any) -> None:
    example = make_examples(1)[0]
    as_teach = encode_example(embedded_tokenizer, example, 512, experts=["teach"])
    assert "Teach a new player" in embedded_tokenizer.decode(as_teach.input_ids)
    prompt_len = sum(1 for x in encode_example(embedded_tokenizer, example, 512).labels if x == IGNORE_INDEX)
    cut = encode_example(embedded_tokenizer, example, prompt_len + 9)
    assert (
        cut is not None and len(cut.input_ids) == prompt_len + 9 and cut.n_targets == 9
    )  # answer cut, prompt whole
    encoded, dropped = encode_all(embedded_tokenizer, make_examples(3), prompt_len - 5)
    assert encoded == [] and dropped == 3  # no room for the answer: dropped, never a cut prompt


def test_collate_pads_right_and_masks_padding(embedded_tokenizer: Any) -> None:
    items, _ = encode_all(
        embedded_tokenizer,
        make_examples(2)
        + [make_examples(1)[0].__class__(("explain",), "Q?", "A much longer answer " * 5, "")],
        512,
    )
    batch = collate(items, embedded_tokenizer.pad_token_id)
    width = max(len(i.input_ids) for i in items)
    assert batch["input_ids"].shape == (3, width)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()


def test_token_loss_counts_only_targets() -> None:
    logits = torch.zeros(1, 4, 5)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 3]])
    nll, counts = nll_from_logits(logits, labels)
    assert counts.tolist() == [2]
    assert torch.allclose(nll, torch.tensor([2 * torch.log(torch.tensor(5.0))]))


def test_loss_from_the_answer_window_equals_the_full_logits(tiny_model) -> None:
    # token_nll skips the prompt's logits (logits_to_keep); the numbers must not change
    examples = make_examples(2) + [
        make_examples(1)[0].__class__(("explain",), "Why?", "Because " * 12, "[CR 1] x")
    ]
    items, _ = encode_all(tiny_model.tokenizer, examples, 512)
    batch = collate(items, tiny_model.tokenizer.pad_token_id)
    with torch.no_grad():
        windowed = token_nll(tiny_model.model, batch)
        full = nll_from_logits(
            tiny_model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            batch["labels"],
        )
    torch.testing.assert_close(windowed[0], full[0], rtol=1e-5, atol=1e-4)
    assert torch.equal(windowed[1], full[1])
