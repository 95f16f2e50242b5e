"""Crash safety, for real: SIGKILL a `hexcore train` process mid-run, check the serving adapter is byte-for-byte
untouched, then `--resume` the run and check it finishes with exactly the planned steps, none repeated.

The subprocess trains the tiny random Llama saved as an ordinary Hugging Face model directory (the engine
loads any local model path), so the test costs seconds, not minutes; the code path is the real CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.adapter_store import AdapterStore, ensure_initial_adapters
from engine.api import Expert
from hexcore.settings import PROJECT_ROOT
from training.checkpoint import list_checkpoints

MAX_STEPS = 10


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hexcore", *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_sigkill_mid_training_leaves_serving_untouched_and_resume_finishes(
    tiny_model_factory, data_dir: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "tiny-llama"
    loaded = dataclasses.replace(
        tiny_model_factory(), name=model_dir.name
    )  # the name load_base_model gives it
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    state = tmp_path / "state"
    store = AdapterStore(state / "adapters")
    ensure_initial_adapters(loaded, store, (Expert.EXPLAIN,))
    before = _snapshot(store.expert_dir("explain"))
    assert "serving.json" in before and "v0/adapter_model.safetensors" in before

    config = {
        "lora_r": 4, "target_modules": ["q_proj", "v_proj"], "batch_size": 1, "grad_accum": 1, "max_steps": MAX_STEPS,
        "checkpoint_every": 2, "eval_every": 4, "max_train_examples": 12, "max_val_examples": 2, "max_seq_len": 256,
        "min_train_examples": 2, "min_val_examples": 1, "progress": False, "learning_rate": 1e-3,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "HEXCORE_STATE_DIR": str(state),
        "HEXCORE_DATA_DIR": str(data_dir),
        "HEXCORE_ENGINE_MODEL": str(model_dir),
        "HEXCORE_ENGINE_DTYPE": "float32",
        "HEXCORE_ENGINE_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    proc = _run(["train", "--expert", "explain", "--config", str(tmp_path / "config.json")], env)
    runs = state / "training" / "runs"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            run_dirs = list(runs.glob("explain-*")) if runs.is_dir() else []
            if run_dirs and len(list_checkpoints(run_dirs[0])) >= 2:
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        else:
            raise AssertionError("no checkpoint appeared in time")
        assert proc.poll() is None, "training finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    # the serving adapter, its pointer and the store are exactly as before: nothing was promoted or added
    assert _snapshot(store.expert_dir("explain")) == before
    assert [v.version for v in store.versions("explain")] == ["v0"]
    run_dir = run_dirs[0]
    killed_at = int(list_checkpoints(run_dir)[-1].name.split("-")[1])
    assert 4 <= killed_at < MAX_STEPS

    resumed = _run(["train", "--resume", str(run_dir), "--json"], env)
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err[-3000:]
    outcome = json.loads(out[out.index("{") :])
    assert outcome["version"] == "v1" and outcome["run_dir"] == str(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["training"]["resumed_from"] == killed_at
    assert report["training"]["final_step"] == report["training"]["total_steps"] == MAX_STEPS
    logged = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in logged if "train_loss" in h] == list(range(1, MAX_STEPS + 1))  # each step once
    # promotion (or not) happened only now, atomically, through the store
    after = json.loads((store.expert_dir("explain") / "serving.json").read_text())
    assert after["serving"] == ("v1" if outcome["promoted"] else "v0")
