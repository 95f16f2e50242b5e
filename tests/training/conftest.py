"""Training fixtures: the engine's model fixtures (real SmolLM2 and the tiny random Llama), small example
sets, and fast training configs.

Trainer mechanics run on the tiny model (float32, deterministic); the real model is used only for a short
real run and the validation/promotion path, so the whole package stays within a few minutes of CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.engine.conftest import (  # noqa: F401  (re-exported fixtures)
    _one_torch_thread,
    base_model,
    embedded_tokenizer,
    tiny_model,
    tiny_model_factory,
)
from training.config import TrainConfig
from training.examples import TrainingExample


def make_examples(n: int, expert: str = "explain", offset: int = 0) -> list[TrainingExample]:
    """Short, learnable examples: a fixed answer pattern with a number taken from the context."""
    return [
        TrainingExample(
            experts=(expert,),
            question=f"What does rule {100 + i}.1 say?",
            answer=f"Rule {100 + i}.1 says a player draws {i % 7 + 1} cards. (CR {100 + i}.1)",
            context=f"[CR {100 + i}.1] A player draws {i % 7 + 1} cards.",
            source="test",
            group=f"rule:{100 + i}.1",
        )
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="session")
def small_data() -> tuple[list[TrainingExample], list[TrainingExample]]:
    return make_examples(12), make_examples(3, offset=50)


@pytest.fixture
def fast_config() -> Callable[..., TrainConfig]:
    """A config for the tiny model: tiny batches, short sequences, no progress bars."""

    def make(**changes: Any) -> TrainConfig:
        base = dict(
            lora_r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=("q_proj", "v_proj"),
            learning_rate=5e-3,
            batch_size=2,
            grad_accum=1,
            epochs=1,
            max_seq_len=192,
            progress=False,
            min_train_examples=2,
            min_val_examples=1,
            warmup_ratio=0.0,
        )
        base.update(changes)
        return TrainConfig(**base)

    return make
