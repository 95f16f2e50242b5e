"""Training the cross-expert attention over frozen adapters (tiny model), and its versioned store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from engine.fusion import CrossExpertAttention
from training.examples import TrainingExample
from training.fusion_train import FusionStore, train_fusion


def _adapter(loaded: Any, path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = get_peft_model(
        loaded.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(path)
    loaded.model = model.unload()
    return path


def _mixed(n: int, offset: int = 0) -> list[TrainingExample]:
    return [
        TrainingExample(
            ("explain", "teach"),
            f"What is rule {i}, and teach me?",
            f"Rule {i} is simple. For example: {i}.",
            f"[CR {i}] text",
        )
        for i in range(offset, offset + n)
    ]


def test_fusion_trains_only_its_parameters_and_keeps_the_best(
    tiny_model_factory, fast_config, tmp_path: Path
) -> None:
    loaded = tiny_model_factory()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    dirs = {
        "explain": _adapter(loaded, tmp_path / "explain", 1),
        "teach": _adapter(loaded, tmp_path / "teach", 2),
    }
    config = fast_config(epochs=3, min_train_examples=2, promotion_margin=0.0)
    result = train_fusion(loaded, dirs, _mixed(6), _mixed(2, offset=50), config, lr=0.05)
    assert (
        result.val_loss <= result.average_val_loss
    )  # the best epoch is kept, starting from the plain average
    assert len(result.history) >= 1 and result.serving_val_loss is None
    changed = result.fusion.score.abs().sum() > 0 or result.fusion.expert_bias.abs().sum() > 0
    assert changed == (result.val_loss < result.average_val_loss)
    assert result.promote == (result.val_loss < result.average_val_loss)
    after = loaded.model.state_dict()  # base restored: no LoRA layers left, weights untouched
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_fusion_store_versions_and_pointer(tmp_path: Path) -> None:
    store = FusionStore(tmp_path / "fusion")
    assert store.serving() is None and store.versions() == []
    fusion = CrossExpertAttention(8)
    with torch.no_grad():
        fusion.score.fill_(0.5)
    v0 = store.save_new(fusion, {"metrics": {}})
    v1 = store.save_new(CrossExpertAttention(8), {"metrics": {}})
    assert (v0, v1) == ("v0", "v1") and store.serving() is None  # saving never serves
    store.promote(v0)
    loaded = CrossExpertAttention.load(store.serving())
    assert torch.equal(loaded.score, fusion.score)
    store.promote(v1)
    assert store.serving().name == "v1"


def test_the_engine_serves_the_fusion_training_promoted(tiny_model_factory, tmp_path: Path) -> None:
    """Training writes where serving reads: ``FusionStore.from_settings`` and ``load_fusion`` agree."""
    from engine.runner import load_fusion
    from hexcore.settings import PathSettings, Settings

    loaded = tiny_model_factory()
    hidden = int(loaded.model.config.hidden_size)
    settings = Settings(paths=PathSettings(state_dir=tmp_path / "state"))
    untrained = load_fusion(settings.paths.state_dir, loaded)
    assert torch.count_nonzero(untrained.score) == 0  # nothing promoted: the plain average

    store = FusionStore.from_settings(settings)
    trained = CrossExpertAttention(hidden)
    with torch.no_grad():
        trained.score.fill_(0.25)
    version = store.save_new(trained, {"metrics": {}})
    assert torch.count_nonzero(load_fusion(settings.paths.state_dir, loaded).score) == 0  # saved, not served
    store.promote(version)
    served = load_fusion(settings.paths.state_dir, loaded)
    assert torch.equal(served.score, trained.score)
