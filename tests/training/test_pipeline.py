"""The pipeline: a short real run on SmolLM2, promotion only when better, the nightly job's choices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from engine.adapter_store import AdapterStore
from hexcore.settings import PathSettings, Settings, TrainingSettings
from training.config import TrainConfig
from training.datasets import build_expert_dataset
from training.paths import training_dir
from training.pipeline import run_retraining, train_expert, validate_and_store


def _settings(tmp_path: Path, data_dir: Path, **training: Any) -> Settings:
    return Settings(
        paths=PathSettings(data_dir=data_dir, state_dir=tmp_path / "state"),
        training=TrainingSettings(**training),
    )


REAL = TrainConfig(
    lora_r=8,
    lora_alpha=16,
    lora_dropout=0.0,
    target_modules=("q_proj", "v_proj"),
    learning_rate=2e-3,
    batch_size=2,
    grad_accum=1,
    epochs=1,
    max_seq_len=200,
    max_train_examples=4,
    max_val_examples=3,
    eval_every=1,
    warmup_ratio=0.0,
    progress=False,
    min_train_examples=2,
    min_val_examples=2,
)


@pytest.fixture(scope="module")
def real_run(base_model, tmp_path_factory, data_dir: Path) -> tuple[Settings, Any, Any]:
    """A few real optimizer steps of the EXPLAIN adapter on rules-derived examples (shared by the tests below)."""
    settings = _settings(tmp_path_factory.mktemp("real"), data_dir)
    dataset = build_expert_dataset(settings, "explain", config=REAL, tokenizer=base_model.tokenizer)
    outcome = train_expert(settings, "explain", config=REAL, loaded=base_model, dataset=dataset)
    return settings, dataset, outcome


@pytest.mark.slow
def test_short_real_run_is_validated_stored_and_promoted_only_if_better(real_run, base_model) -> None:
    settings, dataset, outcome = real_run
    run_dir = Path(outcome.run_dir)
    m = outcome.metrics
    assert m["final_step"] == m["total_steps"] == 2 and m["train_examples"] == len(dataset.train)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    vals = [h["val_loss"] for h in history if "val_loss" in h]
    assert len(vals) == 2 and all(v == v for v in vals)
    assert vals[-1] < vals[0] + 0.5  # the few steps did not blow up
    for name in (
        "report.json",
        "curves.png",
        "run.json",
        "data/train.jsonl",
        "data/val.csv",
        "adapter/adapter_model.safetensors",
    ):
        assert (run_dir / name).is_file(), name
    store = AdapterStore.from_settings(settings)
    assert [v.version for v in store.versions("explain")] == ["v0", "v1"]  # v0 = the no-op, served before
    better = m["candidate_perplexity"] < 0.98 * min(m["base_perplexity"], m["serving_perplexity"])
    assert outcome.promoted is better and outcome.serving == ("v1" if better else "v0")
    assert m["serving_perplexity"] == pytest.approx(m["base_perplexity"], rel=1e-3)  # v0 is a no-op adapter
    meta = store.get("explain", "v1").meta
    assert meta["base_model"] == base_model.name and meta["validation"]["promote"] is better
    report = json.loads((run_dir / "report.json").read_text())
    assert report["validation"]["decision"]["reason"] == outcome.reason
    # training and validation took their LoRA layers out again
    assert not any(isinstance(module, BaseTunerLayer) for module in base_model.model.modules())


@pytest.mark.slow
def test_a_worse_adapter_is_not_promoted(real_run, base_model, tmp_path: Path) -> None:
    settings, dataset, _ = real_run
    store = AdapterStore.from_settings(settings)
    pointer = store.expert_dir("explain") / "serving.json"
    before, serving_before = pointer.read_bytes(), store.serving("explain").version
    # a "trained" adapter that is really noise: far worse than the base model and the serving adapter
    torch.manual_seed(0)
    noisy = get_peft_model(
        base_model.model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, param in noisy.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.2)
    noisy.save_pretrained(tmp_path / "noisy")
    base_model.model = noisy.unload()
    outcome = validate_and_store(settings, base_model, "explain", tmp_path / "noisy", dataset, REAL)
    assert not outcome.promoted and "serving adapter stays" in outcome.reason
    assert outcome.metrics["candidate_perplexity"] > outcome.metrics["base_perplexity"]
    assert pointer.read_bytes() == before and store.serving("explain").version == serving_before
    assert outcome.version == "v2" and store.get("explain", "v2").meta["validation"]["promote"] is False


def test_nightly_job_picks_experts_with_new_data(
    tmp_path: Path, data_dir: Path, tiny_model_factory, fast_config
) -> None:
    settings = _settings(tmp_path, data_dir, min_new_feedback=2)
    loaded = tiny_model_factory()
    config = fast_config(max_train_examples=4, max_val_examples=2)
    feedback = [
        {"question": f"How do I teach blocking, part {i}?", "answer": f"Blockers are declared in the declare blockers step (CR 509.1). Part {i}.",
         "experts": ["teach"], "citations": ["509.1"], "score": 1}
        for i in range(3)
    ] + [{"question": "What is ward?", "answer": "Nothing.", "experts": ["explain"], "citations": [], "score": -1}]  # fmt: skip
    report = run_retraining(settings, None, feedback, config=config, loaded=loaded)
    assert list(report.experts) == ["teach"]
    assert report.skipped["explain"] == "1 new examples (needs 2)" and report.skipped["reason"].startswith(
        "0 new"
    )
    teach = report.experts["teach"]
    assert teach.error is None and teach.version == "v1" and teach.serving in ("v0", "v1")
    assert json.loads(json.dumps(report.to_json()))["experts"]["teach"]["version"] == "v1"
    # the same feedback again: nothing new, nothing trained
    again = run_retraining(settings, None, feedback, config=config, loaded=loaded)
    assert again.experts == {} and again.skipped["teach"] == "0 new examples (needs 2)"
    # a failing expert is reported, and its serving adapter is untouched
    store = AdapterStore.from_settings(settings)
    pointer = (store.expert_dir("teach") / "serving.json").read_bytes()
    failed = run_retraining(
        settings, ["teach"], feedback, config=config.replace(min_train_examples=10_000), loaded=loaded
    )
    assert failed.experts["teach"].promoted is False and "NotEnoughData" in failed.experts["teach"].reason
    assert (store.expert_dir("teach") / "serving.json").read_bytes() == pointer
    # an admin folder holding evaluation data: that expert is refused, with the reason
    folder = settings.paths.state_dir / "training_data" / "reason"
    folder.mkdir(parents=True)
    (folder / "quiz.jsonl").symlink_to(data_dir / "qa" / "quiz-dev.jsonl")
    refused = run_retraining(settings, ["reason"], feedback, config=config, loaded=loaded)
    assert refused.experts == {} and refused.skipped["reason"].startswith("admin training data refused")
    # only one retraining at a time
    with FileLock(str(training_dir(settings) / ".retrain.lock")):
        busy = run_retraining(settings, ["teach"], feedback, config=config, loaded=loaded)
    assert busy.experts == {} and busy.skipped == {"teach": "another retraining is running"}
