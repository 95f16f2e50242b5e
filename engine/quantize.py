"""Weight-only int4 quantization for CPU decoding (``HEXCORE_ENGINE_QUANTIZATION=int4``).

Why: decoding one token on CPU is bound by reading the weights. SmolLM2-135M in bfloat16 reads 270 MB per
token; in int4 it reads 80 MB, and ``torch._weight_int4pack_mm_for_cpu`` (group size 32) runs one row through
these projections 2-4x faster than a bfloat16 ``nn.Linear``.

The format is GGUF's Q4_1, the one the embedded model ships in: every group of 32 consecutive input weights of
an output row is ``scale * q + min`` with ``q`` in 0..15. torch's packed format dequantizes as
``(q - 8) * scale + zero``, so ``zero = min + 8 * scale``. The embedded model's decoder weights *are* Q4_1
blocks of 32 (dequantized once into the bfloat16 cache), so re-quantizing them recovers the GGUF values up
to bfloat16 rounding; only the output head (the embedding table, Q8_0 in the GGUF) really loses precision.

What is quantized: every ``nn.Linear`` of the model (for Llama-style models: the q/k/v/o and MLP projections
of each decoder layer, and the ``lm_head``). A layer the kernel cannot take stays as it is, logged with the
reason: the input size must be a multiple of the group size, the output size a multiple of 16. The embedding
table is untouched (lookups stay exact).

**Few rows int4, many rows dense.** The kernel does not reuse a weight across rows: its time grows linearly
with the rows, so from ~8-16 rows a bfloat16 matmul is faster (measured per layer: 16 rows 1.7x slower than
bfloat16, a 139-token prefill 2.4x; a whole 1000-token prefill 1.7x slower). So by default every
:class:`Int4Linear` keeps its dense ``weight`` too and uses it for calls with more than ``INT4_MAX_ROWS``
rows (prefill, big batches), the int4 kernel for the rest (decode steps of up to 16 rows): decoding gets the
int4 speed, prefill keeps the bfloat16 speed, at the cost of memory (dense + int4, ~1.3x the bfloat16
weights). ``quantize_int4(model, keep_dense=False)`` drops the dense weights (memory ~0.3x) and runs every
call in int4.

**Weights and the tie.** The output head always keeps its dense ``weight``: tied to the input embeddings
(SmolLM2) it *is* the embedding table, so it costs nothing, the tie stays intact (``lm_head.weight is
embed_tokens.weight``), and code reading ``get_output_embeddings().weight`` (its dtype, the fusion head) keeps
working. Without ``keep_dense`` the decoder projections have ``weight = None``.

**peft / LoRA.** :class:`Int4Linear` is a subclass of ``nn.Linear``: peft's LoRA dispatch wraps any
``nn.Linear`` in ``lora.Linear``, whose forward calls the base layer and adds the adapters, mixed batches
(``adapter_names``) included. So adapters load, hot-swap and unload on a quantized model exactly as on a
dense one, from adapter configs as they are stored (peft's custom-module registry would have to be set on
every ``LoraConfig`` the engine reads). peft places and casts new adapter weights after the base layer's
``weight``; without it, after ``qweight`` (device) and ``compute_dtype`` (dtype), as for GPTQ and bitsandbytes
layers: :class:`Int4Linear` has both (the packed uint8 tensor; the replaced layer's dtype), so adapters get the
device and dtype they get on the dense model. Merging an adapter into the base weights (``merge_and_unload``,
``merge_adapter``) is not supported: it would change the dense weight only.

**Gradients.** The kernel has no backward. :class:`Int4Linear` computes the input gradient itself
(``grad_out @ W``) with the dense weight, or a dequantized copy made for that call when there is none (the
frozen base weights get no gradient), so LoRA training and the fusion head still train on a quantized model.

CPU only: the packed layout and the kernel are torch's CPU ones (CUDA int4 uses another layout).

Measured on the embedded model (2-core EPYC, torch 2.13): single-stream decoding 2.2-2.4x faster than
bfloat16; teacher-forced on rules text, next-token top-1 agreement with bfloat16 0.86-0.88 and perplexity
+6-8%, nearly all of it from the int4 head (int4 layers with a bfloat16 head: agreement 0.99, +1.3%). See
tests/engine/test_quantize.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.autograd.function import FunctionCtx

log = logging.getLogger(__name__)

GROUP_SIZE = 32
"""Inputs per (scale, zero) pair: GGUF Q4_1's block size."""
N_MULTIPLE = 16
"""The CPU packing needs the output size to be a multiple of this."""
COMPUTE_DTYPE = torch.bfloat16
"""Activation dtype of the kernel (inputs are cast to it, outputs cast back)."""
INT4_MAX_ROWS = 16
"""Calls with more rows use the dense weight when the layer keeps one. Measured (1 thread, Generator decode
of B rows, tok/s): B=8 int4 113 vs dense 88, B=12 116 vs 105, B=16 118 vs 116; bfloat16 alone: 86 and 115."""
ROWS_PER_CHUNK = 4096
"""Output rows quantized at a time (a multiple of 64, the packing's largest row block)."""

_int4_mm = torch._weight_int4pack_mm_for_cpu


def unsupported_reason(linear: nn.Linear, group_size: int = GROUP_SIZE) -> str | None:
    """Why the int4 kernel cannot take this layer (None when it can)."""
    if linear.weight is None or linear.weight.dim() != 2:
        return "no dense 2-D weight"
    if linear.weight.device.type != "cpu":
        return f"weight on {linear.weight.device}, the int4 kernel is CPU-only"
    if not linear.weight.is_floating_point():
        return f"weight dtype {linear.weight.dtype} is not floating point"
    if linear.in_features % group_size:
        return f"in_features {linear.in_features} is not a multiple of the group size {group_size}"
    if linear.out_features % N_MULTIPLE:
        return f"out_features {linear.out_features} is not a multiple of {N_MULTIPLE}"
    return None


@torch.no_grad()
def quantize_weight(
    weight: torch.Tensor, group_size: int = GROUP_SIZE, rows_per_chunk: int = ROWS_PER_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, K]`` float weight -> (packed uint8 weight ``[N, K/2]``, ``[K/gs, N, 2]`` bfloat16 scales and zeros).

    Asymmetric per group (min/max), like GGUF Q4_1. The grid is rounded to bfloat16 *before* the 4-bit
    codes are chosen, so each code is the nearest point of the grid the kernel actually uses. Done in
    chunks of rows (the packing is row-block local) so a large head needs no float32 copy of itself.
    """
    packed, scales = [], []
    for rows in weight.detach().split(rows_per_chunk):
        n, k = rows.shape
        groups = rows.float().reshape(n, k // group_size, group_size)
        low = groups.amin(-1, keepdim=True)
        high = groups.amax(-1, keepdim=True)
        scale = ((high - low).clamp(min=1e-6) / 15).to(COMPUTE_DTYPE).float()
        zero = (low + 8 * scale).to(COMPUTE_DTYPE).float()
        q = ((groups - zero) / scale + 8).round_().clamp_(0, 15).to(torch.int32).reshape(n, k)
        packed.append(torch._convert_weight_to_int4pack_for_cpu(q, 1))
        scales.append(torch.cat([scale, zero], dim=-1).to(COMPUTE_DTYPE))  # [n, K/gs, 2]
    return torch.cat(packed), torch.cat(scales).transpose(0, 1).contiguous()


class _Int4MatMul(torch.autograd.Function):
    """``x @ W.T`` with the int4 kernel, and the input gradient computed by hand (the kernel has none)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, layer: Int4Linear) -> torch.Tensor:  # type: ignore[override]
        ctx.layer, ctx.dtype = layer, x.dtype
        return _int4_mm(x, layer.qweight, layer.group_size, layer.scales_and_zeros)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        weight = ctx.layer.dense_weight()
        return (grad.to(weight.dtype) @ weight).to(ctx.dtype), None


class Int4Linear(nn.Linear):
    """A frozen ``nn.Linear`` whose matmul runs on int4 weights (torch's CPU packed format, group size 32).

    Buffers: ``qweight`` (packed uint8, ``[N, K/2]``) and ``scales_and_zeros`` (``[K/gs, N, 2]`` bfloat16).
    ``weight``: the dense weight when kept (then used for calls of more than ``int4_max_rows`` rows), else
    None. Takes inputs ``[..., K]`` of any float dtype and returns the input's dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        qweight: torch.Tensor,
        scales_and_zeros: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        weight: nn.Parameter | None = None,
        group_size: int = GROUP_SIZE,
        dtype: torch.dtype = COMPUTE_DTYPE,
    ) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a dense weight
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.int4_max_rows = INT4_MAX_ROWS
        """Rows above which a call uses the kept dense weight instead of the int4 kernel."""
        self.compute_dtype = dtype
        """The replaced layer's dtype: what peft casts new adapter weights to (as for bitsandbytes layers)."""
        self.register_parameter("weight", weight)
        self.register_parameter(
            "bias", None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        )
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales_and_zeros", scales_and_zeros)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        group_size: int = GROUP_SIZE,
        keep_weight: bool = False,
        packed: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Int4Linear:
        """Quantize ``linear`` (see :func:`unsupported_reason` for what it must satisfy).

        ``keep_weight``: keep ``linear.weight`` (the same Parameter object, so ties survive) as ``weight``.
        ``packed``: ``(qweight, scales_and_zeros)`` computed before for this very weight (a cache).
        """
        reason = unsupported_reason(linear, group_size)
        if reason is not None:
            raise ValueError(f"cannot quantize this layer to int4: {reason}")
        qweight, scales_and_zeros = (
            packed if packed is not None else quantize_weight(linear.weight, group_size)
        )
        return cls(
            linear.in_features,
            linear.out_features,
            qweight,
            scales_and_zeros,
            bias=linear.bias,
            weight=linear.weight if keep_weight else None,
            group_size=group_size,
            dtype=linear.weight.dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Called ~200 times per decoded token: no work beyond the kernel when x is bfloat16 already.
        leading = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] > self.int4_max_rows and self.weight is not None:
            return torch.nn.functional.linear(x, self.weight, self.bias)  # prefill, big batches
        if x2.dtype is not COMPUTE_DTYPE:
            x2 = x2.to(COMPUTE_DTYPE)
        x2 = x2.contiguous()  # the kernel refuses strided inputs; free when already contiguous
        if x.requires_grad and torch.is_grad_enabled():
            y = _Int4MatMul.apply(x2, self)
        else:
            y = _int4_mm(x2, self.qweight, self.group_size, self.scales_and_zeros)
        y = y.view(*leading, self.out_features)
        if y.dtype is not x.dtype:
            y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    @torch.no_grad()
    def dequantize(self) -> torch.Tensor:
        """The ``[N, K]`` bfloat16 weight the kernel computes with (the kernel applied to the identity)."""
        eye = torch.eye(self.in_features, dtype=COMPUTE_DTYPE, device=self.qweight.device)
        out = _int4_mm(eye, self.qweight, self.group_size, self.scales_and_zeros)
        return out.t().contiguous()

    def dense_weight(self) -> torch.Tensor:
        """The kept dense weight, else the dequantized one (for gradients and checks)."""
        return self.weight.detach() if self.weight is not None else self.dequantize()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Int4Linear:
        super()._apply(fn, recurse)
        # ``model.to(dtype)`` would cast the scales too; the kernel needs them in bfloat16.
        if self.scales_and_zeros.dtype != COMPUTE_DTYPE:
            self.scales_and_zeros = self.scales_and_zeros.to(COMPUTE_DTYPE)
        return self

    def extra_repr(self) -> str:
        kept = ", dense weight kept" if self.weight is not None else ""
        return f"{super().extra_repr()}, int4 group_size={self.group_size}{kept}"


@dataclass(slots=True)
class QuantizationReport:
    """What :func:`quantize_int4` did."""

    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Module name -> why it stays dense."""
    dense_bytes: int = 0
    """Bytes of the quantized layers' weights before."""
    int4_bytes: int = 0
    """Bytes of their packed weights + scales after."""
    kept_dense: bool = True
    """Whether the dense weights were kept for many-row calls."""
    from_cache: int = 0
    """Layers whose packed weights came from the cache file instead of being quantized now."""

    def summary(self) -> str:
        text = (
            f"int4: {len(self.quantized)} linear layers quantized "
            f"({self.dense_bytes / 2**20:.0f} MiB -> {self.int4_bytes / 2**20:.0f} MiB read per decoded token"
            f"{', dense weights kept for prefill' if self.kept_dense else ''})"
        )
        if self.skipped:
            text += f", {len(self.skipped)} layers not quantized"
        return text


CACHE_FORMAT = "1"


def _read_cache(path: Path, key: str, group_size: int) -> dict[str, torch.Tensor]:
    """The packed tensors saved for ``key`` (name.qweight, name.scales_and_zeros), or {} when stale/unreadable."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta != {"format": CACHE_FORMAT, "key": key, "group_size": str(group_size)}:
            return {}
        return load_file(str(path))
    except Exception as exc:  # missing, truncated, not safetensors (SafetensorError): only a cache
        if path.exists():
            log.warning("int4 cache %s unreadable (%s): quantizing again", path, exc)
        return {}


def _write_cache(path: Path, key: str, group_size: int, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(
            tensors, str(tmp), metadata={"format": CACHE_FORMAT, "key": key, "group_size": str(group_size)}
        )
        os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    except OSError as exc:  # a read-only model folder: quantizing each start still works
        log.warning("could not write the int4 cache %s: %s", path, exc)
        tmp.unlink(missing_ok=True)


@torch.no_grad()
def quantize_int4(
    model: nn.Module,
    group_size: int = GROUP_SIZE,
    *,
    keep_dense: bool = True,
    cache: Path | None = None,
    cache_key: str = "",
) -> QuantizationReport:
    """Replace the model's ``nn.Linear`` layers by :class:`Int4Linear` in place (CPU only).

    ``keep_dense``: keep each layer's dense weight for calls with many rows (prefill, big batches); False
    saves the memory and runs everything in int4 (see the module doc). The output head keeps its dense weight
    either way (the embedding table when tied). Quantize before adding adapters: a model that already holds
    peft layers is refused. Layers the kernel cannot take stay as they are and are listed (with the reason)
    in the report and the log.

    ``cache``: a safetensors file holding the packed weights of an earlier run for the same weights
    (``cache_key`` names them, e.g. the model's source); read when it matches, else written. Quantizing
    SmolLM2-135M takes ~1.5 s, reading the cache a few ms: it is most of a warm ``hexcore ask``'s model load.
    """
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        BaseTunerLayer = ()  # type: ignore[assignment]  # noqa: N806
    if BaseTunerLayer and any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError("quantize the base model before adding peft adapters")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    report = QuantizationReport(kept_dense=keep_dense)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not isinstance(module, Int4Linear)
    ]
    cached = _read_cache(cache, cache_key, group_size) if cache is not None else {}
    fresh: dict[str, torch.Tensor] = {}
    for name, linear in targets:
        reason = unsupported_reason(linear, group_size)
        if reason is not None:
            report.skipped[name] = reason
            continue
        packed = None
        if f"{name}.qweight" in cached and f"{name}.scales_and_zeros" in cached:
            packed = (cached[f"{name}.qweight"], cached[f"{name}.scales_and_zeros"])
        quantized = Int4Linear.from_linear(
            linear, group_size, keep_weight=keep_dense or linear is head, packed=packed
        )
        if packed is None:
            fresh[f"{name}.qweight"] = quantized.qweight
            fresh[f"{name}.scales_and_zeros"] = quantized.scales_and_zeros
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, quantized)
        report.quantized.append(name)
        report.dense_bytes += linear.weight.numel() * linear.weight.element_size()
        report.int4_bytes += quantized.qweight.numel() + quantized.scales_and_zeros.numel() * 2
    if cache is not None and fresh:
        _write_cache(cache, cache_key, group_size, {**cached, **fresh})
    report.from_cache = len(report.quantized) - len(fresh) // 2
    for name, reason in report.skipped.items():
        log.info("int4: %s not quantized: %s", name, reason)
    log.info("%s", report.summary())
    return report
