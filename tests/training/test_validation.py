"""Held-out perplexity of base vs adapters, the A/B comparison, and the curves PNG (tiny model)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from tests.training.conftest import make_examples
from training.batching import collate, encode_all, token_nll
from training.plots import plot_curves
from training.validation import AdapterEvaluator, compare, validate_adapter


def _adapter(loaded: Any, path: Path, seed: int, scale: float) -> Path:
    torch.manual_seed(seed)
    model = get_peft_model(
        loaded.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, scale)
    model.save_pretrained(path)
    loaded.model = model.unload()
    return path


@pytest.fixture(scope="module")
def adapters(tiny_model_factory, tmp_path_factory) -> tuple[Any, Path, Path]:
    loaded = tiny_model_factory()
    root = tmp_path_factory.mktemp("adapters")
    return loaded, _adapter(loaded, root / "small", 1, 0.05), _adapter(loaded, root / "large", 2, 1.0)


def _direct_loss(model: Any, loaded: Any, examples) -> float:
    encoded, _ = encode_all(loaded.tokenizer, examples, 320, ["explain"])
    nll, counts = token_nll(model, collate(encoded, loaded.tokenizer.pad_token_id))
    return float(nll.sum() / counts.sum())


def test_evaluator_matches_direct_computation_and_restores_the_model(adapters) -> None:
    loaded, small, large = adapters
    examples = make_examples(3)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    with torch.no_grad():
        base_direct = _direct_loss(loaded.model, loaded, examples)
    with AdapterEvaluator(loaded, batch_size=2) as evaluator:
        base = evaluator.evaluate(None, examples, ["explain"])
        got_small = evaluator.evaluate(small, examples, ["explain"])
        got_large = evaluator.evaluate(large, examples, ["explain"])
        base_again = evaluator.evaluate(None, examples, ["explain"])  # adapters disabled, not merged
    assert base.loss == pytest.approx(base_direct, rel=1e-5) and base_again.loss == pytest.approx(
        base.loss, rel=1e-6
    )
    assert base.examples == 3 and base.tokens > 0 and base.perplexity == pytest.approx(math.exp(base.loss))
    assert len(base.per_example) == 3 and all(math.isfinite(x) for x in base.per_example)
    assert got_small.loss != got_large.loss != base.loss
    # the evaluator's number for an adapter equals loading that adapter on its own
    assert not any(isinstance(m, BaseTunerLayer) for m in loaded.model.modules())
    after = loaded.model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    alone = PeftModel.from_pretrained(loaded.model, str(large))
    with torch.no_grad():
        direct_large = _direct_loss(alone, loaded, examples)
    loaded.model = alone.unload()
    assert got_large.loss == pytest.approx(direct_large, rel=1e-5)


def test_compare_and_validate(adapters) -> None:
    loaded, small, large = adapters
    examples = make_examples(4)
    result = compare(small, large, examples, loaded, experts=["explain"])
    assert result.winner == ("a" if result.a.perplexity < result.b.perplexity else "b")
    assert 0.0 <= result.a_win_rate <= 1.0 and result.to_json()["a"]["examples"] == 4
    tie = compare(small, small, examples, loaded, experts=["explain"])
    assert tie.winner == "tie" and tie.a_win_rate == 0.0
    better, worse = (small, large) if result.winner == "a" else (large, small)
    report = validate_adapter(
        loaded, worse, examples, expert="explain", margin=0.0, serving_dir=better, serving_name="v3"
    )
    assert not report.decision.promote and report.serving == "v3"
    assert report.to_json()["decision"]["promote"] is False and "reduction_vs_base" in report.to_json()


def test_curves_png(tmp_path: Path) -> None:
    history = [{"step": s, "train_loss": 3.0 / s, "lr": 1e-3} for s in range(1, 6)] + [
        {"step": 2, "val_loss": 2.0},
        {"step": 4, "val_loss": 1.5},
    ]
    path = plot_curves(history, tmp_path / "c" / "curves.png", title="explain")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert plot_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
