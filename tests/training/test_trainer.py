"""LoraTrainer mechanics on the tiny random Llama: exact accumulation, exact resume, early stopping, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import make_examples
from training.checkpoint import list_checkpoints, load_checkpoint
from training.errors import CheckpointError, NotEnoughData
from training.examples import TrainingExample
from training.trainer import ADAPTER_DIR, HISTORY_FILE, LoraTrainer


def _varied(n: int) -> list[TrainingExample]:
    """Examples with answers of different lengths, so micro-batches hold different numbers of target tokens."""
    out = []
    for i, ex in enumerate(make_examples(n)):
        extra = " Then they discard a card." * ((i * 7) % 5)
        out.append(
            TrainingExample(ex.experts, ex.question, ex.answer + extra, ex.context, ex.source, group=ex.group)
        )
    return out


def _perturb_lora_b(trainer: LoraTrainer, seed: int = 7) -> None:
    # peft starts B at zero, which makes A's gradient zero; give B values so every LoRA matrix gets a gradient.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(trainer.peft_model.named_parameters()):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def test_accumulated_gradient_equals_one_big_batch(tiny_model_factory, fast_config, tmp_path: Path) -> None:
    train, val = _varied(8), make_examples(2, offset=40)
    grads, losses, counts = {}, {}, {}
    for name, (batch, accum) in {"2x2": (2, 2), "1x4": (4, 1)}.items():
        trainer = LoraTrainer(
            tiny_model_factory(), train, val, fast_config(batch_size=batch, grad_accum=accum), tmp_path / name
        )
        _perturb_lora_b(trainer)
        examples = trainer.step_examples(0)
        counts[name] = [sum(e.n_targets for e in examples[i : i + 2]) for i in (0, 2)]
        losses[name] = trainer.accumulate(examples)
        grads[name] = {n: p.grad.clone() for n, p in trainer.peft_model.named_parameters() if p.requires_grad}
        trainer.release()
    assert counts["2x2"][0] != counts["2x2"][1]  # unequal micro-batches: a per-micro-batch mean would differ
    assert losses["2x2"] == pytest.approx(losses["1x4"], rel=1e-6)
    assert grads["2x2"].keys() == grads["1x4"].keys() and grads["2x2"]
    for key, grad in grads["2x2"].items():
        assert grad.abs().sum() > 0, key
        torch.testing.assert_close(grad, grads["1x4"][key], rtol=1e-5, atol=1e-8)


def test_resume_mid_epoch_equals_an_uninterrupted_run(
    tiny_model_factory, fast_config, tmp_path: Path
) -> None:
    train, val = _varied(6), make_examples(1, offset=40)
    # Dropout on: the restored RNG state must reproduce the same dropout masks.
    config = fast_config(epochs=2, lora_dropout=0.1, eval_every=2, checkpoint_every=2, keep_checkpoints=5)

    full = LoraTrainer(tiny_model_factory(), train, val, config, tmp_path / "full")
    full_result = full.train()
    full_weights = full.trainable_state()
    full.release()

    first = LoraTrainer(tiny_model_factory(), train, val, config, tmp_path / "split")
    paused = first.train(until_step=2)  # stops mid-epoch 0 (3 steps per epoch)
    first.release()
    assert paused.final_step == 2 and [p.name for p in list_checkpoints(tmp_path / "split")] == [
        "step-000002"
    ]

    second = LoraTrainer(tiny_model_factory(), train, val, config, tmp_path / "split")
    assert second.resume(tmp_path / "split") == 2
    resumed = second.train()
    resumed_weights = second.trainable_state()
    second.release()

    assert resumed.final_step == full_result.final_step == 6 and resumed.resumed_from == 2
    for name, tensor in full_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name
    # the raw last-step weights (before the best ones are restored) match too, and so does the curve
    last_full = load_file(tmp_path / "full" / "checkpoints" / "step-000006" / "trainable.safetensors")
    last_resumed = load_file(tmp_path / "split" / "checkpoints" / "step-000006" / "trainable.safetensors")
    assert all(torch.equal(last_full[k], last_resumed[k]) for k in last_full)

    def curve(history: list[dict]) -> list[tuple]:
        return [(h["step"], h.get("train_loss"), h.get("val_loss"), h.get("lr")) for h in history]

    assert curve(resumed.history) == curve(full_result.history)
    logged = [json.loads(line) for line in (tmp_path / "split" / HISTORY_FILE).read_text().splitlines()]
    assert [h["step"] for h in logged if "train_loss" in h] == list(range(1, 7))  # no step twice, none lost


def test_early_stopping_keeps_the_best_weights(
    tiny_model_factory, fast_config, small_data, tmp_path: Path, monkeypatch
) -> None:
    train, val = small_data
    config = fast_config(
        epochs=5, eval_every=1, checkpoint_every=1, keep_checkpoints=10, patience=2, min_delta=0.01
    )
    trainer = LoraTrainer(tiny_model_factory(), train, val, config, tmp_path / "run")
    # The validation curve is scripted (the rest of the loop is real): best at step 2, then two worse evaluations.
    curve = iter([3.0, 2.0, 2.5, 1.995, 2.7, 2.8])
    monkeypatch.setattr(trainer, "evaluate", lambda: next(curve))
    result = trainer.train()
    final = trainer.trainable_state()
    trainer.release()
    # step 4's 1.995 is a new best but not by min_delta: kept as best, yet it does not reset patience
    assert result.stopped_early and result.final_step == 4 and result.total_steps == 30
    assert result.best_step == 4 and result.best_val_loss == 1.995
    best = load_file(tmp_path / "run" / "checkpoints" / "step-000004" / "trainable.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in best)
    step3 = load_file(tmp_path / "run" / "checkpoints" / "step-000003" / "trainable.safetensors")
    assert any(not torch.equal(final[k], step3[k]) for k in best)
    saved = load_file(tmp_path / "run" / ADAPTER_DIR / "adapter_model.safetensors")
    assert len(saved) == len(best)  # the peft-format adapter holds the same tensors
    assert sorted(t.sum().item() for t in saved.values()) == pytest.approx(
        sorted(t.sum().item() for t in best.values())
    )


def test_early_stopping_restores_an_earlier_best(
    tiny_model_factory, fast_config, small_data, tmp_path: Path, monkeypatch
) -> None:
    train, val = small_data
    config = fast_config(epochs=5, eval_every=1, checkpoint_every=1, keep_checkpoints=10, patience=2)
    trainer = LoraTrainer(tiny_model_factory(), train, val, config, tmp_path / "run")
    curve = iter([3.0, 2.0, 2.5, 2.6, 2.7])
    monkeypatch.setattr(trainer, "evaluate", lambda: next(curve))
    result = trainer.train()
    final = trainer.trainable_state()
    trainer.release()
    assert result.stopped_early and result.final_step == 4 and result.best_step == 2
    best = load_file(tmp_path / "run" / "checkpoints" / "step-000002" / "trainable.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in best)
    assert load_checkpoint(tmp_path / "run").step == 4  # resuming a stopped run starts from its last step


def test_checkpoint_files_pruning_and_release(
    tiny_model_factory, fast_config, small_data, tmp_path: Path
) -> None:
    train, val = small_data
    loaded = tiny_model_factory()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    trainer = LoraTrainer(
        loaded, train[:8], val, fast_config(checkpoint_every=1, keep_checkpoints=2), tmp_path / "run"
    )
    result = trainer.train()
    trainer.release()
    checkpoints = list_checkpoints(tmp_path / "run")
    assert [p.name for p in checkpoints] == ["step-000003", "step-000004"] and result.final_step == 4
    expected = {
        "trainable.safetensors", "best.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt",
        "trainer_state.json", "adapter_config.json", "adapter_model.safetensors",
    }  # fmt: skip
    assert expected <= {p.name for p in checkpoints[-1].iterdir()}
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["config"]["lora_r"] == 4 and state["fingerprint"]
    # release() took the LoRA layers out: the base model is exactly what it was
    after = loaded.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_resume_refuses_other_settings_or_data(
    tiny_model_factory, fast_config, small_data, tmp_path: Path
) -> None:
    train, val = small_data
    first = LoraTrainer(tiny_model_factory(), train, val, fast_config(), tmp_path / "run")
    first.train(until_step=2)
    first.release()
    other_lr = LoraTrainer(
        tiny_model_factory(), train, val, fast_config(learning_rate=1e-2), tmp_path / "run"
    )
    with pytest.raises(CheckpointError, match="learning_rate"):
        other_lr.resume(tmp_path / "run")
    other_lr.release()
    other_data = LoraTrainer(tiny_model_factory(), train[:-1], val, fast_config(), tmp_path / "run")
    with pytest.raises(CheckpointError, match="data differs"):
        other_data.resume(tmp_path / "run")
    other_data.release()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_too_little_data_is_a_clear_error(tiny_model_factory, fast_config, tmp_path: Path) -> None:
    with pytest.raises(NotEnoughData, match="usable training examples"):
        LoraTrainer(
            tiny_model_factory(), make_examples(1), [], fast_config(min_train_examples=4), tmp_path / "run"
        )
