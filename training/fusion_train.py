"""Train the cross-expert attention (``engine.fusion.CrossExpertAttention``) on mixed-expert examples.

The base model and the expert adapters stay frozen; only the fusion's scoring vector and per-expert biases
(hidden + 5 parameters) learn. Because nothing upstream of the fusion changes, each example's expert hidden
states are computed once (one mixed-adapter batch per example, ``engine.fusion.expert_hidden_states``) and
only the positions that predict answer tokens are kept; every epoch then costs one LM-head product per
answer token instead of K full forward passes.

Versions live beside the adapters, in the same style as ``engine.adapter_store``::

    <state_dir>/fusion/v<n>/fusion.safetensors + fusion.json + meta.json
    <state_dir>/fusion/serving.json            {"serving": "v2", "history": [...]}

A trained fusion is promoted only if its held-out loss beats both the plain average of the experts (the
untrained fusion) and the serving fusion by the configured margin.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.fusion import (
    FUSION_DIR,
    CrossExpertAttention,
    expert_hidden_states,
    expert_index,
    serving_fusion_dir,
)
from training.batching import IGNORE_INDEX, encode_example
from training.config import TrainConfig
from training.errors import NotEnoughData
from training.examples import TrainingExample

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

    from engine.model_loader import LoadedModel
    from hexcore.settings import Settings

_VERSION = re.compile(r"^v(\d+)$")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class FusionStore:
    """Versioned fusion weights with an atomic serving pointer (``<state_dir>/fusion``)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def from_settings(cls, settings: Settings) -> FusionStore:
        return cls(settings.paths.state_dir / FUSION_DIR)

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [
            (int(m.group(1)), p.name)
            for p in self.root.iterdir()
            if (m := _VERSION.match(p.name)) and p.is_dir()
        ]
        return [name for _, name in sorted(found)]

    def serving(self) -> Path | None:
        """The serving fusion's directory (what the engine loads with ``CrossExpertAttention.load``)."""
        return serving_fusion_dir(self.root)

    def save_new(self, fusion: CrossExpertAttention, meta: dict[str, Any]) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        fusion.save(tmp)
        numbers = [int(v[1:]) for v in self.versions()]
        version = f"v{max(numbers) + 1 if numbers else 0}"
        _write_json_atomic(
            tmp / "meta.json",
            {**meta, "version": version, "created": datetime.now(UTC).isoformat(timespec="seconds")},
        )
        os.rename(tmp, self.root / version)
        return version

    def promote(self, version: str) -> None:
        if not (self.root / version).is_dir():
            raise FileNotFoundError(f"fusion version {version} does not exist in {self.root}")
        try:
            pointer = json.loads((self.root / "serving.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pointer = {}
        history = list(pointer.get("history", []))
        if pointer.get("serving") and pointer["serving"] != version:
            history.append(pointer["serving"])
        _write_json_atomic(self.root / "serving.json", {"serving": version, "history": history})


@dataclass(slots=True)
class _Cached:
    hidden: torch.Tensor  # [K, n, H] at positions that predict an answer token
    targets: torch.Tensor  # [n]
    expert_ids: list[int]


@dataclass(slots=True)
class FusionResult:
    fusion: CrossExpertAttention
    val_loss: float
    average_val_loss: float
    """Held-out loss of the untrained fusion (a plain average of the experts)."""
    serving_val_loss: float | None
    promote: bool
    reason: str
    version: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if k not in ("fusion", "history")}


@torch.no_grad()
def _cache(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TrainingExample],
    max_len: int,
    device: torch.device,
) -> list[_Cached]:
    out = []
    for example in examples:
        encoded = encode_example(tokenizer, example, max_len)
        if encoded is None:
            continue
        ids = torch.tensor([encoded.input_ids], device=device)
        labels = torch.tensor(encoded.labels)
        hidden, _ = expert_hidden_states(peft_model, ids, torch.ones_like(ids), list(example.experts))
        positions = (labels[1:] != IGNORE_INDEX).nonzero().squeeze(1)  # position p predicts token p + 1
        out.append(
            _Cached(
                hidden[:, 0, positions, :].float().cpu(),
                labels[positions + 1],
                [expert_index(e) for e in example.experts],
            )
        )
    return out


def _loss(
    fusion: CrossExpertAttention, head: torch.nn.Module, items: Sequence[_Cached]
) -> tuple[torch.Tensor, int]:
    total, count = torch.zeros(()), 0
    for item in items:
        fused = fusion(item.hidden.unsqueeze(1), item.expert_ids)[0]  # [n, H]
        logits = head(fused.to(head.weight.dtype)).float()
        total = total + torch.nn.functional.cross_entropy(logits, item.targets, reduction="sum")
        count += len(item.targets)
    return total, count


def _fit(
    fusion: CrossExpertAttention,
    head: torch.nn.Module,
    train_items: Sequence[_Cached],
    val_loss: Callable[[CrossExpertAttention], float],
    start_loss: float,
    config: TrainConfig,
    lr: float,
) -> tuple[float, list[dict[str, Any]]]:
    """Train ``fusion`` with early stopping and leave it at its best held-out loss: (best loss, history)."""
    optimizer = torch.optim.AdamW(fusion.parameters(), lr=lr, weight_decay=config.weight_decay)
    step_size = config.batch_size * config.grad_accum
    best, best_state, history = start_loss, {k: v.clone() for k, v in fusion.state_dict().items()}, []
    patience_ref, bad = start_loss, 0
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        order = torch.randperm(len(train_items), generator=generator).tolist()
        for start in range(0, len(order), step_size):
            batch = [train_items[i] for i in order[start : start + step_size]]
            total, count = _loss(fusion, head, batch)
            optimizer.zero_grad(set_to_none=True)
            (total / max(count, 1)).backward()
            optimizer.step()
        loss = val_loss(fusion)
        history.append({"epoch": epoch + 1, "val_loss": loss})
        if loss < best:  # keep the best; patience counts only improvements of at least min_delta
            best, best_state = loss, {k: v.clone() for k, v in fusion.state_dict().items()}
        if loss < patience_ref - config.min_delta:
            patience_ref, bad = loss, 0
        else:
            bad += 1
            if config.early_stopping and bad >= config.patience:
                break
    fusion.load_state_dict(best_state)
    return best, history


def train_fusion(
    loaded: LoadedModel,
    adapter_dirs: dict[str, Path],
    train: Sequence[TrainingExample],
    val: Sequence[TrainingExample],
    config: TrainConfig,
    *,
    lr: float = 1e-2,
    serving: CrossExpertAttention | None = None,
) -> FusionResult:
    """Fit a fusion over the given experts' adapters (expert -> adapter dir); the base model is restored after."""
    from peft import PeftModel

    started = time.perf_counter()

    def usable(rows: Sequence[TrainingExample]) -> list[TrainingExample]:
        return [e for e in rows if len(e.experts) > 1 and all(x in adapter_dirs for x in e.experts)]

    train, val = usable(train), usable(val)
    if len(train) < config.min_train_examples or not val:
        raise NotEnoughData(
            f"fusion needs mixed-expert examples: {len(train)} to train, {len(val)} to validate"
        )
    names = sorted({x for e in [*train, *val] for x in e.experts})
    peft_model = PeftModel.from_pretrained(loaded.model, str(adapter_dirs[names[0]]), adapter_name=names[0])
    try:
        for name in names[1:]:
            peft_model.load_adapter(str(adapter_dirs[name]), adapter_name=name)
        peft_model.eval()  # peft refuses adapter_names in training mode
        train_items = _cache(peft_model, loaded.tokenizer, train, config.max_seq_len, loaded.device)
        val_items = _cache(peft_model, loaded.tokenizer, val, config.max_seq_len, loaded.device)
        head = peft_model.get_output_embeddings()
        hidden_size = train_items[0].hidden.shape[-1]
        torch.manual_seed(config.seed)
        fusion = CrossExpertAttention(hidden_size).to(torch.float32)

        def val_loss(module: CrossExpertAttention) -> float:
            with torch.no_grad():
                total, count = _loss(module, head, val_items)
            return float(total) / max(count, 1)

        average = val_loss(fusion)
        serving_loss = (
            val_loss(serving) if serving is not None and serving.hidden_size == hidden_size else None
        )
        best, history = _fit(fusion, head, train_items, val_loss, average, config, lr)
    finally:
        loaded.model = peft_model.unload()
        loaded.model.eval()
    baseline = min(average, serving_loss) if serving_loss is not None else average
    promote = math.isfinite(best) and math.exp(best) < math.exp(baseline) * (1 - config.promotion_margin)
    reason = (
        f"promoted: held-out loss {best:.4f} beats the {'serving fusion' if baseline == serving_loss else 'plain average'} ({baseline:.4f})"
        if promote
        else f"not promoted: held-out loss {best:.4f} does not beat {baseline:.4f} by the {config.promotion_margin:.0%} perplexity margin"
    )
    return FusionResult(
        fusion,
        best,
        average,
        serving_loss,
        promote,
        reason,
        history=history,
        seconds=time.perf_counter() - started,
    )
