"""Tokenize training examples with the loss on the answer only, and pad them into batches.

The prompt (system + context + question + assistant header, from ``engine.prompts``) and the answer are
tokenized separately and concatenated. That is exactly what serving does: the model reads the prompt's
tokens and then produces the answer's tokens one by one, so no BPE merge across the boundary can shift the
mask. Targets are the answer and the ``<|im_end|>`` that stops generation; prompt and padding are -100.

An example whose prompt alone leaves no room for a useful answer within ``max_len`` is dropped rather than
cut: serving never cuts a passage either (``knowledge.context`` skips it whole). A long answer is cut at
``max_len``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from engine.prompts import IM_END
from training.examples import TrainingExample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
MIN_ANSWER_TOKENS = 8


@dataclass(frozen=True, slots=True)
class EncodedExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def n_targets(self) -> int:
        # Token t predicts t+1, so the first label never counts; it is always a prompt token anyway.
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    example: TrainingExample,
    max_len: int,
    experts: Sequence[str] | None = None,
) -> EncodedExample | None:
    prompt = tokenizer(example.prompt(experts), add_special_tokens=False)["input_ids"]
    answer = tokenizer(example.answer.strip() + IM_END, add_special_tokens=False)["input_ids"]
    room = max_len - len(prompt)
    if room < min(MIN_ANSWER_TOKENS, len(answer)):
        return None
    answer = answer[:room]
    return EncodedExample(tuple(prompt + answer), tuple([IGNORE_INDEX] * len(prompt) + answer))


def encode_all(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TrainingExample],
    max_len: int,
    experts: Sequence[str] | None = None,
) -> tuple[list[EncodedExample], int]:
    """Encoded examples (in order) and how many were dropped as too long."""
    out, dropped = [], 0
    for example in examples:
        encoded = encode_example(tokenizer, example, max_len, experts)
        if encoded is None:
            dropped += 1
        else:
            out.append(encoded)
    return out, dropped


def fingerprint(encoded: Sequence[EncodedExample]) -> str:
    """Identity of a tokenized dataset in order (a resumed run must see the same data)."""
    digest = hashlib.sha256()
    for item in encoded:
        digest.update(bytes(str(item.input_ids), "ascii"))
        digest.update(bytes(str(item.labels), "ascii"))
    return digest.hexdigest()[:16]


def collate(
    batch: Sequence[EncodedExample], pad_id: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask, labels (pad positions are -100)."""
    width = max(len(item.input_ids) for item in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(item.labels)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "module", base)  # DDP
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def token_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed negative log-likelihood of the target tokens [B] (float32), and their counts [B].

    The LM head (576 x 49k for SmolLM2, about a fifth of the model's compute) runs only from the earliest
    answer position of the batch onwards (``logits_to_keep``): the prompt's logits are never needed. The
    result is identical to computing every logit.
    """
    labels = batch["labels"]
    width = labels.shape[1]
    kwargs: dict[str, Any] = {}
    targets = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if len(targets) and _accepts_logits_to_keep(model):
        keep = width - int(targets[0]) + 1  # position p predicts token p + 1
        kwargs["logits_to_keep"] = keep
        labels = labels[:, width - keep :]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).logits
    return nll_from_logits(logits, labels)


def nll_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    counts = (shift_labels != IGNORE_INDEX).sum(dim=1)
    return losses.sum(dim=1), counts
