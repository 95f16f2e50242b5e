"""Cross-expert attention: answer with several experts at once by fusing their final hidden states.

The K selected experts run as ONE mixed-adapter batch (the inputs repeated K times along the batch, peft's
``adapter_names`` choosing each copy's adapter). Their final hidden states ``h_k`` (after the model's final
norm, i.e. what the LM head reads) are fused per position::

    score_k = w . LayerNorm(h_k) + b[expert_k]      (w: learned scoring vector, b: per-expert bias)
    alpha   = softmax_k(score)
    fused   = sum_k alpha_k * h_k                    -> base LM head -> logits

``w`` and ``b`` start at zero, so an untrained fusion averages the experts. It is small (hidden + 5
parameters) and trains with the base model and adapters frozen; the peft model must stay in eval mode
(peft refuses ``adapter_names`` in training mode), which does not stop gradients.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from engine.api import Expert

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import Cache

FUSION_WEIGHTS = "fusion.safetensors"
FUSION_CONFIG = "fusion.json"
EXPERT_ORDER: tuple[Expert, ...] = tuple(Expert)
"""Index of each expert's bias (stored in the saved config so a reordered enum cannot misalign it)."""


def expert_index(expert: Expert | str) -> int:
    return EXPERT_ORDER.index(Expert(expert))


class CrossExpertAttention(nn.Module):
    """Per-position softmax attention over K experts' hidden states, returning one hidden state.

    ``forward(hidden [K, B, T, H], expert_ids [K] | None) -> [B, T, H]`` in the input's dtype and device.
    Scores are computed in float32 whatever the input dtype; K = 1 returns the input unchanged.
    """

    def __init__(self, hidden_size: int, n_experts_max: int = 5, expert_bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.hidden_size = hidden_size
        self.n_experts_max = n_experts_max
        self.eps = eps
        self.score = nn.Parameter(torch.zeros(hidden_size))
        self.expert_bias = nn.Parameter(torch.zeros(n_experts_max)) if expert_bias else None

    def attention_weights(self, hidden: torch.Tensor, expert_ids: torch.Tensor | Sequence[int] | None = None):
        """The fusion weights alpha, [K, B, T] float32, summing to 1 over K."""
        k = hidden.shape[0]
        if hidden.dim() != 4 or hidden.shape[-1] != self.hidden_size:
            raise ValueError(
                f"expected hidden states [K, B, T, {self.hidden_size}], got {tuple(hidden.shape)}"
            )
        if not 1 <= k <= self.n_experts_max:
            raise ValueError(f"K={k} experts; this fusion takes 1..{self.n_experts_max}")
        normed = F.layer_norm(hidden.float(), (self.hidden_size,), eps=self.eps)
        scores = normed @ self.score.to(device=hidden.device, dtype=torch.float32)  # [K, B, T]
        if self.expert_bias is not None and expert_ids is not None:
            ids = torch.as_tensor(expert_ids, device=hidden.device, dtype=torch.long)
            if ids.shape != (k,):
                raise ValueError(f"expert_ids must have one id per expert ({k}), got {tuple(ids.shape)}")
            scores = scores + self.expert_bias.to(device=hidden.device, dtype=torch.float32)[ids].view(
                k, 1, 1
            )
        return torch.softmax(scores, dim=0)

    def forward(
        self, hidden: torch.Tensor, expert_ids: torch.Tensor | Sequence[int] | None = None
    ) -> torch.Tensor:
        if hidden.dim() == 4 and hidden.shape[0] == 1:
            return hidden[0]
        alpha = self.attention_weights(hidden, expert_ids)
        fused = (alpha.unsqueeze(-1) * hidden.float()).sum(dim=0)
        return fused.to(hidden.dtype)

    def config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "n_experts_max": self.n_experts_max,
            "expert_bias": self.expert_bias is not None,
            "eps": self.eps,
            "expert_order": [e.value for e in EXPERT_ORDER],
            "format": 1,
        }

    def save(self, path: Path | str) -> None:
        """Write ``fusion.safetensors`` + ``fusion.json`` into the directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path / FUSION_WEIGHTS))
        (path / FUSION_CONFIG).write_text(json.dumps(self.config(), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str = "cpu") -> CrossExpertAttention:
        path = Path(path)
        config = json.loads((path / FUSION_CONFIG).read_text(encoding="utf-8"))
        order = config.get("expert_order", [e.value for e in EXPERT_ORDER])
        fusion = cls(
            config["hidden_size"], config["n_experts_max"], config["expert_bias"], config.get("eps", 1e-5)
        )
        state = load_file(str(path / FUSION_WEIGHTS))
        if fusion.expert_bias is not None and order != [e.value for e in EXPERT_ORDER]:
            saved = state["expert_bias"]  # re-index the biases into today's expert order
            bias = torch.zeros_like(saved)
            for i, expert in enumerate(EXPERT_ORDER[: len(bias)]):
                if expert.value in order and order.index(expert.value) < len(saved):
                    bias[i] = saved[order.index(expert.value)]
            state["expert_bias"] = bias
        fusion.load_state_dict(state)
        return fusion.to(device)


FUSION_DIR = "fusion"
"""Trained fusions live in ``<state_dir>/fusion``: ``v<n>/`` versions and a ``serving.json`` pointer."""
SERVING_POINTER = "serving.json"


def fusion_root(state_dir: Path | str) -> Path:
    return Path(state_dir) / FUSION_DIR


def serving_fusion_dir(root: Path | str) -> Path | None:
    """The serving version's directory under ``root`` (``<state_dir>/fusion``), or None when none is promoted.

    Written by ``training.fusion_train.FusionStore``; read here so serving and training agree on one place.
    """
    root = Path(root)
    try:
        version = json.loads((root / SERVING_POINTER).read_text(encoding="utf-8")).get("serving")
    except (OSError, ValueError, AttributeError):
        return None
    path = root / version if isinstance(version, str) and version else None
    return path if path is not None and path.is_dir() else None


# --- running the experts as one batch ----------------------------------------------------------------------


@dataclass(slots=True)
class FusedOutput:
    logits: torch.Tensor
    """[B, T, V] (or [B, 1, V] with ``last_only``)."""
    past_key_values: Cache | None
    """The K*B-row cache of the mixed batch (expert-major rows)."""
    weights: torch.Tensor | None
    """Fusion weights [K, B, T] (None for K = 1)."""


def _expert_ids(experts: Sequence[Expert | str] | None, k: int) -> list[int] | None:
    if experts is None:
        return None
    if len(experts) != k:
        raise ValueError(f"{len(experts)} experts named for {k} adapters")
    return [expert_index(e) for e in experts]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding (what ``generate`` uses)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def expert_hidden_states(
    peft_model: PeftModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    adapter_names: Sequence[str],
    *,
    position_ids: torch.Tensor | None = None,
    past_key_values: Cache | None = None,
    use_cache: bool = False,
) -> tuple[torch.Tensor, Cache | None]:
    """Final hidden states of each adapter over the same inputs, from one mixed batch: ([K, B, T, H], cache).

    ``attention_mask`` spans the cache and the new tokens; ``input_ids`` are only the new tokens.
    """
    k = len(adapter_names)
    if k == 0:
        raise ValueError("at least one adapter name is needed")
    batch, steps = input_ids.shape
    if position_ids is None:
        position_ids = positions_from_mask(attention_mask)[:, -steps:]
    names = [name for name in adapter_names for _ in range(batch)]
    kwargs: dict[str, Any] = {}
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    if _accepts(base, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1  # we only need hidden states; skip the K-fold LM head
    out = peft_model(
        input_ids=input_ids.repeat(k, 1),
        attention_mask=attention_mask.repeat(k, 1),
        position_ids=position_ids.repeat(k, 1),
        past_key_values=past_key_values,
        use_cache=use_cache,
        output_hidden_states=True,
        adapter_names=names,
        **kwargs,
    )
    hidden = out.hidden_states[-1]
    return hidden.view(k, batch, steps, hidden.shape[-1]), (out.past_key_values if use_cache else None)


def fused_forward(
    peft_model: PeftModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    adapter_names: Sequence[str],
    fusion: CrossExpertAttention,
    *,
    experts: Sequence[Expert | str] | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Cache | None = None,
    use_cache: bool = False,
    last_only: bool = False,
) -> FusedOutput:
    """Run the K adapters as one batch, fuse their hidden states, apply the base LM head."""
    hidden, cache = expert_hidden_states(
        peft_model,
        input_ids,
        attention_mask,
        adapter_names,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=use_cache,
    )
    if last_only:
        hidden = hidden[:, :, -1:, :]
    ids = _expert_ids(experts, hidden.shape[0])
    weights = fusion.attention_weights(hidden, ids) if hidden.shape[0] > 1 else None
    fused = fusion(hidden, ids)
    head = peft_model.get_output_embeddings()
    logits = head(fused.to(head.weight.dtype))
    return FusedOutput(logits=logits, past_key_values=cache, weights=weights)


def fused_logits(
    peft_model: PeftModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    adapter_names: Sequence[str],
    fusion: CrossExpertAttention,
    experts: Sequence[Expert | str] | None = None,
) -> torch.Tensor:
    """Logits [B, T, V] of the fused experts (differentiable w.r.t. the fusion parameters)."""
    return fused_forward(peft_model, input_ids, attention_mask, adapter_names, fusion, experts=experts).logits


@torch.inference_mode()
def generate_fused(
    peft_model: PeftModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    adapter_names: Sequence[str],
    fusion: CrossExpertAttention,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    on_token: Callable[[torch.Tensor], bool | None] | None = None,
    experts: Sequence[Expert | str] | None = None,
) -> torch.Tensor:
    """Greedy decoding from the fused experts with a KV cache; returns the new tokens [B, n].

    The repeated K*B batch keeps one cache. ``on_token(ids [B])`` is called after each step (rows that
    already ended get ``pad_token_id``); returning False stops early (cancellation). Stops when every row
    produced an EOS or after ``max_new_tokens``. ``input_ids`` are left-padded.
    """
    from transformers import DynamicCache

    eos = (
        []
        if eos_token_id is None
        else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    )
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    device = input_ids.device
    eos_tensor = torch.tensor(eos, device=device, dtype=torch.long)
    batch = input_ids.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    mask = attention_mask.clone()
    positions = positions_from_mask(mask)
    cache = DynamicCache(config=getattr(peft_model, "config", None))
    out = fused_forward(
        peft_model,
        input_ids,
        mask,
        adapter_names,
        fusion,
        experts=experts,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        last_only=True,
    )
    generated: list[torch.Tensor] = []
    position = positions[:, -1:]
    for _ in range(max_new_tokens):
        token = out.logits[:, -1, :].argmax(dim=-1)
        token = torch.where(finished, torch.full_like(token, pad), token)
        generated.append(token)
        if eos:
            finished |= torch.isin(token, eos_tensor)
        if on_token is not None and on_token(token) is False:
            break
        if bool(finished.all()) or len(generated) == max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        position = position + 1
        out = fused_forward(
            peft_model,
            token.unsqueeze(1),
            mask,
            adapter_names,
            fusion,
            experts=experts,
            position_ids=position,
            past_key_values=out.past_key_values,
            use_cache=True,
            last_only=True,
        )
    if not generated:
        return input_ids.new_zeros(batch, 0)
    return torch.stack(generated, dim=1)
