"""Plan how a causal LM is spread over several GPUs, from its config alone (no GPU needed).

:func:`plan_device_map` sizes every block of a Llama-family decoder (Llama, Mistral, Mixtral, Qwen2/3,
SmolLM...) for a weight format (fp32, fp16/bf16, bitsandbytes 8-bit or 4-bit including their scale
overhead), adds the KV cache each layer needs, and splits the layers into contiguous runs, one per GPU, so
that every GPU is filled to the same fraction of its budget (budget = memory minus a reserve for the CUDA
context and activations). The result's ``device_map`` goes straight to ``from_pretrained(device_map=...)``.

Mixture-of-experts and what a device_map can express
----------------------------------------------------
Spreading a MoE model's experts over GPUs (expert parallelism) balances memory and lets experts of one
layer run on different cards. In transformers 5, however, a Mixtral layer stores all its experts as two
fused 3-D parameters (``mlp.experts.gate_up_proj`` [experts, 2*ffn, hidden] and ``mlp.experts.down_proj``);
a device_map places whole modules (``accelerate.dispatch_model`` hooks move a module's inputs to its
device), and one tensor lives on one device, so no module name can put expert 3 on GPU 1 and expert 4 on
GPU 0. Nor can a layer's MoE block sit apart from its attention: the decoder layer adds the residual
across them (``_no_split_modules = ["MixtralDecoderLayer"]``). The finest placement a device_map can
express is therefore one decoder layer. The plan gives both:

- ``device_map``: the loadable, layer-granular split (balanced; what the loader uses);
- ``expert_placement``: experts alternated across GPUs (expert e of layer l on GPU (e + l) mod n), with the
  dense parts (embeddings, attention, norms, router, head) split around them so the totals balance
  (``expert_parallel_bytes``). Executing it needs an expert-parallel runtime (transformers'
  ``DistributedConfig`` expert parallelism under torchrun, or a server such as vLLM), not a device_map.

Also measured here (transformers 5.23 + bitsandbytes 0.50.2): bitsandbytes quantizes ``nn.Linear`` only,
so Mixtral's fused experts stay in 16-bit when loaded with ``BitsAndBytesConfig(load_in_4bit=True)``.
``ModelSpec.quantized_experts=False`` models that (the loader sets it); a checkpoint quantized by a method
that handles fused experts is what makes "Mixtral 8x7B in 4-bit" real.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

GiB = 2**30
Device = int | str

WEIGHT_FORMATS = ("fp32", "fp16", "bf16", "8bit", "4bit")
DEFAULT_RESERVE_BYTES = 1 * GiB
"""Per GPU, kept free for the CUDA context (~0.4-0.6 GiB), allocator slack and activations."""
NF4_BLOCK = 64
"""bitsandbytes 4-bit: one absmax per 64 weights (8-bit when double-quantized, with an fp32 per 256 blocks)."""


def format_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB / 4 else f"{n / 2**20:.1f} MiB"


class ModelDoesNotFit(ModelLoadError):
    """The model (weights + KV cache) needs more memory than the GPUs' budgets allow."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The sizes that decide a model's memory, from a transformers config (Llama-family naming)."""

    num_layers: int
    hidden_size: int
    vocab_size: int
    intermediate_size: int
    """FFN width of a dense MLP, or of one expert in a MoE layer."""
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int = 0
    """0 for a dense model."""
    experts_per_token: int = 0
    tie_embeddings: bool = False
    attention_bias: bool = False
    weights: str = "bf16"
    """Weight format of the linear layers: fp32, fp16, bf16, 8bit, 4bit."""
    compute_bytes: int = 2
    """Bytes per parameter of what is never quantized (embeddings, head, norms, router)."""
    quantized_experts: bool = True
    """Whether a 4/8-bit format also applies to fused expert tensors (False for bitsandbytes, see module doc)."""
    double_quant: bool = True
    name: str = "model"

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, not {self.weights!r}")
        if self.num_layers < 1 or self.hidden_size < 1 or self.vocab_size < 1:
            raise ValueError("num_layers, hidden_size and vocab_size must be positive")

    @classmethod
    def from_config(
        cls, config: PretrainedConfig, weights: str = "bf16", **overrides: int | float | bool | str
    ) -> ModelSpec:
        """Read a transformers ``PretrainedConfig`` (the text config of a multimodal one)."""
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        heads = config.num_attention_heads
        hidden = config.hidden_size
        experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0
        ffn = (
            getattr(config, "moe_intermediate_size", None) if experts else None
        ) or config.intermediate_size
        values = dict(
            num_layers=config.num_hidden_layers,
            hidden_size=hidden,
            vocab_size=config.vocab_size,
            intermediate_size=ffn,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or hidden // heads,
            num_experts=experts,
            experts_per_token=getattr(config, "num_experts_per_tok", 0) or 0,
            tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(config, "attention_bias", False)),
            weights=weights,
            compute_bytes=4 if weights == "fp32" else 2,
            name=getattr(config, "model_type", "model"),
        )
        values.update(overrides)
        return cls(**values)

    # --- bytes -------------------------------------------------------------------------------------

    def _linear_bytes_per_param(self) -> float:
        if self.weights == "4bit":
            scales = (1 + 4 / 256) / NF4_BLOCK if self.double_quant else 4 / NF4_BLOCK
            return 0.5 + scales
        if self.weights == "8bit":
            return 1 + 4 / self.hidden_size  # int8 weights + one fp32 scale per output row
        return 4 if self.weights == "fp32" else 2

    def embedding_bytes(self) -> int:
        return self.vocab_size * self.hidden_size * self.compute_bytes

    def head_bytes(self) -> int:
        """The final norm plus the output projection (nothing extra when tied to the embeddings)."""
        head = 0 if self.tie_embeddings else self.vocab_size * self.hidden_size * self.compute_bytes
        return head + self.hidden_size * self.compute_bytes

    def attention_params(self) -> int:
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        params = self.hidden_size * (q_out + 2 * kv_out) + q_out * self.hidden_size
        if self.attention_bias:
            params += q_out + 2 * kv_out
        return params

    def expert_bytes(self) -> int:
        """One expert of one layer (gate, up and down projections)."""
        params = 3 * self.hidden_size * self.intermediate_size
        per_param = self._linear_bytes_per_param() if self.quantized_experts else self.compute_bytes
        return round(params * per_param)

    def dense_layer_bytes(self) -> int:
        """One decoder layer without its experts: attention, two norms, and the dense MLP or the router."""
        linear = self.attention_params()
        if not self.num_experts:
            linear += 3 * self.hidden_size * self.intermediate_size
        small = 2 * self.hidden_size + self.num_experts * self.hidden_size  # norms + router (never quantized)
        return round(linear * self._linear_bytes_per_param()) + small * self.compute_bytes

    def layer_bytes(self) -> int:
        return self.dense_layer_bytes() + self.num_experts * self.expert_bytes()

    def kv_bytes_per_token_per_layer(self, kv_bytes: int = 2) -> int:
        return 2 * self.num_kv_heads * self.head_dim * kv_bytes

    def total_bytes(self) -> int:
        return self.embedding_bytes() + self.num_layers * self.layer_bytes() + self.head_bytes()


@dataclass(frozen=True, slots=True)
class GpuBudget:
    """One GPU's memory: ``usable_bytes = total_bytes - reserve_bytes``."""

    device: Device
    total_bytes: int
    reserve_bytes: int = DEFAULT_RESERVE_BYTES

    @property
    def usable_bytes(self) -> int:
        return max(0, self.total_bytes - self.reserve_bytes)

    @classmethod
    def from_cuda(cls, index: int, reserve_bytes: int = DEFAULT_RESERVE_BYTES) -> GpuBudget:
        """The free memory of CUDA device ``index`` now (what other processes hold is not ours to plan)."""
        import torch

        free, _total = torch.cuda.mem_get_info(index)
        return cls(device=index, total_bytes=free, reserve_bytes=reserve_bytes)


@dataclass(slots=True)
class DevicePlan:
    """Where each block goes, and what each GPU then holds (bytes)."""

    device_map: dict[str, Device]
    """Module name -> device, layer-granular; pass to ``from_pretrained(device_map=...)``."""
    layers: dict[Device, range]
    """Decoder layers per device (contiguous)."""
    weight_bytes: dict[Device, int]
    kv_bytes: dict[Device, int]
    budget_bytes: dict[Device, int]
    """Usable bytes per device (total minus reserve)."""
    expert_placement: dict[int, tuple[Device, ...]] = field(default_factory=dict)
    """MoE only: layer -> device of each expert (alternating); needs an expert-parallel runtime."""
    expert_parallel_bytes: dict[Device, int] = field(default_factory=dict)
    """MoE only: weights + KV per device under ``expert_placement``."""

    @property
    def bytes_per_device(self) -> dict[Device, int]:
        """What the device_map puts on each device: weights + KV cache."""
        return {d: self.weight_bytes[d] + self.kv_bytes[d] for d in self.weight_bytes}

    def summary(self) -> str:
        lines = []
        for device, used in self.bytes_per_device.items():
            span = self.layers[device]
            layers = f"layers {span.start}-{span.stop - 1}" if len(span) else "no layers"
            line = (
                f"{device}: {layers}, weights {format_bytes(self.weight_bytes[device])} + KV "
                f"{format_bytes(self.kv_bytes[device])} = {format_bytes(used)} "
                f"of {format_bytes(self.budget_bytes[device])}"
            )
            if self.expert_parallel_bytes:
                line += f" (expert-parallel: {format_bytes(self.expert_parallel_bytes[device])})"
            lines.append(line)
        return "\n".join(lines)


def _partition(costs: list[int], capacities: list[int]) -> list[int] | None:
    """Contiguous split of ``costs`` over devices minimizing the highest fill fraction.

    Returns, per item, the index of its device; None if it cannot fit at all. Binary search on the fill
    fraction with a greedy check, which is exact for contiguous splits.
    """

    def assign(fraction: float) -> list[int] | None:
        owner, device, used = [], 0, 0
        for cost in costs:
            while device < len(capacities) and used + cost > fraction * capacities[device]:
                device, used = device + 1, 0
            if device == len(capacities):
                return None
            owner.append(device)
            used += cost
        return owner

    if assign(1.0) is None:
        return None
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if assign(mid) is not None else (mid, high)
    return assign(high)


def _totals(owner: list[int], costs: list[int], devices: list[Device]) -> dict[Device, int]:
    totals = dict.fromkeys(devices, 0)
    for index, cost in zip(owner, costs, strict=True):
        totals[devices[index]] += cost
    return totals


def plan_device_map(
    spec: ModelSpec, gpus: list[GpuBudget], *, kv_tokens: int = 4096, kv_bytes: int = 2
) -> DevicePlan:
    """Split ``spec`` over ``gpus`` in order: embeddings on the first, head on the last, layers balanced.

    ``kv_tokens`` is the KV cache to leave room for (all sessions and batch rows together); each layer's
    share travels with that layer. Raises :class:`ModelDoesNotFit` with the numbers when it cannot fit.
    """
    if not gpus:
        raise ModelDoesNotFit("no GPU budgets given; a device map needs at least one device")
    devices = [g.device for g in gpus]
    capacities = [g.usable_bytes for g in gpus]
    layer_kv = spec.kv_bytes_per_token_per_layer(kv_bytes) * kv_tokens
    # Items in forward order; tied embeddings force the head onto the embeddings' device (item 0).
    costs = [spec.embedding_bytes()] + [spec.layer_bytes() + layer_kv] * spec.num_layers + [spec.head_bytes()]
    owner = _partition(costs, capacities)
    if owner is None:
        need = sum(costs)
        hint = ""
        if spec.num_experts and not spec.quantized_experts and spec.weights in ("4bit", "8bit"):
            hint = (
                f" (bitsandbytes leaves the fused expert tensors, "
                f"{format_bytes(spec.num_layers * spec.num_experts * spec.expert_bytes())}, unquantized)"
            )
        raise ModelDoesNotFit(
            f"{spec.name} ({spec.weights}) needs {format_bytes(need)} (weights {format_bytes(spec.total_bytes())} + "
            f"KV for {kv_tokens} tokens {format_bytes(layer_kv * spec.num_layers)}){hint} but {len(gpus)} GPU(s) "
            f"offer {format_bytes(sum(capacities))} after a reserve per GPU (a layer, {format_bytes(costs[1])} "
            "with its KV, cannot be split across GPUs); use more GPUs, a smaller quantization, or a smaller model"
        )
    head_owner = owner[0] if spec.tie_embeddings else owner[-1]
    device_map: dict[str, Device] = {
        "model.embed_tokens": devices[owner[0]],
        "model.rotary_emb": devices[owner[0]],
    }
    layers: dict[Device, list[int]] = {d: [] for d in devices}
    for layer in range(spec.num_layers):
        device = devices[owner[layer + 1]]
        device_map[f"model.layers.{layer}"] = device
        layers[device].append(layer)
    device_map["model.norm"] = devices[owner[-1]]
    device_map["lm_head"] = devices[head_owner]

    kv = {device: layer_kv * len(on_device) for device, on_device in layers.items()}
    weights = {d: total - kv[d] for d, total in _totals(owner, costs, devices).items()}
    plan = DevicePlan(
        device_map=device_map,
        layers={d: range(ls[0], ls[-1] + 1) if ls else range(0) for d, ls in layers.items()},
        weight_bytes=weights,
        kv_bytes=kv,
        budget_bytes=dict(zip(devices, capacities, strict=True)),
    )
    if spec.num_experts:
        plan.expert_placement, plan.expert_parallel_bytes = _expert_parallel(
            spec, devices, capacities, layer_kv
        )
    return plan


def _expert_parallel(
    spec: ModelSpec, devices: list[Device], capacities: list[int], layer_kv: int
) -> tuple[dict[int, tuple[Device, ...]], dict[Device, int]]:
    """Alternate experts over devices, then split the dense parts contiguously into the room left."""
    n = len(devices)
    placement = {
        layer: tuple(devices[(expert + layer) % n] for expert in range(spec.num_experts))
        for layer in range(spec.num_layers)
    }
    expert_load = [0] * n
    for layer in range(spec.num_layers):
        for expert in range(spec.num_experts):
            expert_load[(expert + layer) % n] += spec.expert_bytes()
    dense = (
        [spec.embedding_bytes()]
        + [spec.dense_layer_bytes() + layer_kv] * spec.num_layers
        + [spec.head_bytes()]
    )
    room = [max(0, c - e) for c, e in zip(capacities, expert_load, strict=True)]
    owner = _partition(dense, room)
    if owner is None:  # the expert-parallel layout is advisory: report its totals even when it overflows
        owner = _partition(dense, [r + sum(dense) for r in room]) or [0] * len(dense)
    totals = _totals(owner, dense, devices)
    return placement, {d: totals[d] + expert_load[i] for i, d in enumerate(devices)}


def uncovered_parameters(device_map: dict[str, Device], names: list[str]) -> list[str]:
    """Parameter/buffer names no device_map key covers (as accelerate's ``check_device_map`` decides)."""
    if "" in device_map:
        return []
    return [n for n in names if not any(n == key or n.startswith(key + ".") for key in device_map)]
