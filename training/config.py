"""The training configuration: one validated dataclass, read from YAML or JSON (peft style: checks in
``__post_init__``, so every way of building one, including ``replace``, is validated).

Defaults are sized for the embedded 135M model on a small CPU: LoRA r=8 on the attention projections,
sequences of at most 320 tokens (system prompt ~100 + one rule passage + a short answer), an effective
batch of 8 (4 x 2 accumulated), at most 256 training examples per expert for 2 epochs, and validation on
at most 64 held-out examples so one evaluation stays around a minute on two cores. The learning rate
(1e-3, cosine with 6% warm-up) was chosen from the benchmark: 2e-3 for one epoch of 32 examples already
cut held-out perplexity by 37-67% per expert.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import ConfigError
from training.paths import training_dir

if TYPE_CHECKING:
    from hexcore.settings import Settings

PRECISIONS = ("auto", "no", "fp16", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    # --- LoRA ---
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # --- optimisation ---
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    """Share of the optimizer steps spent warming the learning rate up linearly (then cosine decay to 0)."""
    epochs: int = 2
    max_steps: int | None = None
    """Stop after this many optimizer steps (also sets the schedule length); None = ``epochs`` full epochs."""
    batch_size: int = 4
    """Examples per micro-batch (per process)."""
    grad_accum: int = 2
    """Micro-batches accumulated per optimizer step."""
    max_seq_len: int = 320
    group_by_length: bool = True
    """Batch examples of similar length together (less padding: faster on CPU), in random order of groups."""
    max_grad_norm: float | None = 1.0
    precision: str = "auto"
    """auto: bf16 autocast on CUDA when supported, else fp16 with gradient scaling; on CPU the base model
    stays in its loaded dtype (bf16 by default) and the LoRA weights train in fp32. no/fp16/bf16 force it."""
    seed: int = 0
    # --- validation, early stopping, checkpoints ---
    eval_every: int = 0
    """Evaluate every N optimizer steps; 0 = at the end of each epoch."""
    early_stopping: bool = True
    patience: int = 2
    """Evaluations without an improvement of at least ``min_delta`` before training stops."""
    min_delta: float = 0.005
    """Smallest drop of the validation loss (nats per answer token) that counts as an improvement."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every N optimizer steps; 0 = at each evaluation."""
    keep_checkpoints: int = 2
    # --- data ---
    val_share: float = 0.15
    max_train_examples: int | None = 256
    """Cap per expert (feedback and admin examples are kept first); None = all. 256 x 2 epochs is about half an
    hour per expert on a busy 2-core CPU (docs/BENCHMARKS.md); raise it on a GPU."""
    max_val_examples: int | None = 64
    min_train_examples: int = 8
    min_val_examples: int = 4
    # --- promotion ---
    promotion_margin: float = 0.02
    """A new adapter is promoted only if its held-out perplexity is at least this share below the serving one."""
    progress: bool = True
    """tqdm progress bars."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Free-form notes carried into the run's config.json (never read by the trainer)."""

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"training config: {name} must be {what}, got {getattr(self, name)!r}")

        need(self.lora_r >= 1, "lora_r", ">= 1")
        need(self.lora_r <= 64, "lora_r", "<= 64 (the adapter registry serves ranks up to 64)")
        need(self.lora_alpha > 0, "lora_alpha", "> 0")
        need(0 <= self.lora_dropout < 1, "lora_dropout", "in [0, 1)")
        if isinstance(self.target_modules, str) or isinstance(self.target_modules, list):
            object.__setattr__(
                self,
                "target_modules",
                tuple([self.target_modules] if isinstance(self.target_modules, str) else self.target_modules),
            )
        need(len(self.target_modules) > 0, "target_modules", "a non-empty list of module names")
        need(self.learning_rate > 0, "learning_rate", "> 0")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)")
        need(self.epochs >= 1, "epochs", ">= 1")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", ">= 1 or null")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(self.grad_accum >= 1, "grad_accum", ">= 1")
        need(self.max_seq_len >= 32, "max_seq_len", ">= 32")
        need(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "> 0 or null")
        need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        need(self.eval_every >= 0, "eval_every", ">= 0")
        need(self.patience >= 1, "patience", ">= 1")
        need(self.min_delta >= 0, "min_delta", ">= 0")
        need(self.checkpoint_every >= 0, "checkpoint_every", ">= 0")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", ">= 1")
        need(0 < self.val_share < 1, "val_share", "in (0, 1)")
        need(
            self.max_train_examples is None or self.max_train_examples >= 1,
            "max_train_examples",
            ">= 1 or null",
        )
        need(self.max_val_examples is None or self.max_val_examples >= 1, "max_val_examples", ">= 1 or null")
        need(self.min_train_examples >= 1, "min_train_examples", ">= 1")
        need(self.min_val_examples >= 1, "min_val_examples", ">= 1")
        need(0 <= self.promotion_margin < 1, "promotion_margin", "in [0, 1)")

    # --- building ---
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of training settings, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def from_file(cls, path: Path | str) -> TrainConfig:
        """Read a YAML (``.yaml``/``.yml``) or JSON file; a ``training:`` top-level key is accepted too."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        import yaml

        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(
                f"training config {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {exc}"
            ) from exc
        if isinstance(data, dict) and set(data) == {"training"}:
            data = data["training"]
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed (``None`` values are ignored, so CLI options pass through)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data


CONFIG_NAMES = ("config.yaml", "config.yml", "config.json")


def load_training_config(settings: Settings, path: Path | str | None = None) -> TrainConfig:
    """``path``, else ``<state_dir>/training/config.{yaml,yml,json}`` when present, else the defaults."""
    if path is not None:
        return TrainConfig.from_file(path)
    for name in CONFIG_NAMES:
        candidate = training_dir(settings) / name
        if candidate.is_file():
            return TrainConfig.from_file(candidate)
    return TrainConfig()
