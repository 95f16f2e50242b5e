"""LoRA training of one expert adapter on the base model, with exact resume and early stopping.

Mechanics, and why:

* **Loss on answer tokens only**, summed over the tokens of the whole optimizer step and divided by their
  count. Dividing each micro-batch by the step's total token count (known up front, since every process
  holds the full dataset) makes gradient accumulation exact: 2 micro-batches of 2 give the same gradient as
  one batch of 4, whatever the padding or answer lengths.
* **accelerate** (``Accelerator.prepare``) places the model, wraps it for DDP when launched on several GPUs
  (``accelerate launch``), and applies mixed precision: on CUDA bf16 autocast, or fp16 with a GradScaler
  where bf16 is unsupported. On CPU it runs single-process; the base model stays in its loaded dtype (bf16
  by default, about twice as fast as fp32 here) and only the LoRA weights are trained, in fp32. Each
  optimizer step's micro-batches are dealt round-robin to the processes; non-final micro-batches skip the
  gradient all-reduce (``no_sync``).
* **Cosine schedule with linear warm-up** (transformers' ``get_cosine_schedule_with_warmup``), AdamW on the
  trainable parameters, gradient clipping.
* **Early stopping** on the held-out loss: the best weights are kept (and restored at the end) whenever the
  loss is the lowest so far; training stops after ``patience`` evaluations without an improvement of at least
  ``min_delta``.
* **Exact resume**: see ``training.checkpoint``. Each epoch's data order is a permutation seeded by
  (seed, epoch), so a resumed run sees the same batches; the RNG states (LoRA dropout) are restored too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.batching import EncodedExample, collate, encode_all, fingerprint, token_nll
from training.checkpoint import clean_partial, load_checkpoint, restore_rng, save_checkpoint
from training.config import TrainConfig
from training.errors import CheckpointError, ConfigError, NotEnoughData
from training.examples import TrainingExample

if TYPE_CHECKING:
    from accelerate import Accelerator
    from peft import PeftModel

    from engine.model_loader import LoadedModel

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
HISTORY_FILE = "history.jsonl"
RESUME_KEYS = (
    "lora_r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate", "weight_decay", "warmup_ratio",
    "epochs", "max_steps", "batch_size", "grad_accum", "max_seq_len", "seed", "eval_every", "group_by_length",
)  # fmt: skip
"""Settings a resumed run must share with its checkpoint, or it would not continue the same run."""


def resolve_precision(precision: str) -> str:
    """The accelerate ``mixed_precision`` for a config value on this machine."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        if not cuda:
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise ConfigError("precision fp16 (with gradient scaling) needs CUDA; use bf16 or no on CPU")
    return precision


def make_accelerator(precision: str) -> Accelerator:
    """An ``Accelerator`` for this run. accelerate keeps process-wide state; in a single process (tests,
    the bot's nightly thread) a second run with another precision resets it instead of failing."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    kwargs = {"mixed_precision": resolve_precision(precision), "step_scheduler_with_optimizer": False}
    try:
        return Accelerator(**kwargs)
    except ValueError:
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


@dataclass(slots=True)
class TrainerState:
    global_step: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    patience_ref: float | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    """The best weights in peft's format (adapter_config.json + adapter_model.safetensors)."""
    best_val_loss: float | None
    best_step: int | None
    final_step: int
    total_steps: int
    steps_per_epoch: int
    stopped_early: bool
    history: list[dict[str, Any]]
    seconds: float
    train_examples: int
    val_examples: int
    dropped_too_long: int
    resumed_from: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__slots__ if k != "history"}
        data["run_dir"], data["adapter_dir"] = str(self.run_dir), str(self.adapter_dir)
        return data


class LoraTrainer:
    """Train one LoRA adapter on ``loaded.model`` (wrapped in place; call :meth:`release` to unwrap)."""

    def __init__(
        self,
        loaded: LoadedModel,
        train: Sequence[TrainingExample],
        val: Sequence[TrainingExample],
        config: TrainConfig,
        run_dir: Path,
        *,
        prompt_experts: Sequence[str] | None = None,
    ) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import get_cosine_schedule_with_warmup

        if getattr(loaded, "device_map", None):
            raise ConfigError(
                "training a model split over several GPUs is not supported; launch one process per GPU"
            )
        self.config = config
        self.run_dir = Path(run_dir)
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.pad_id = self.tokenizer.pad_token_id
        self.train_data, dropped_train = encode_all(self.tokenizer, train, config.max_seq_len, prompt_experts)
        self.val_data, dropped_val = encode_all(self.tokenizer, val, config.max_seq_len, prompt_experts)
        self.val_data.sort(key=lambda e: len(e.input_ids))  # less padding per evaluation batch
        self.dropped = dropped_train + dropped_val
        if len(self.train_data) < config.min_train_examples:
            raise NotEnoughData(
                f"{len(self.train_data)} usable training examples (need {config.min_train_examples}); "
                f"{dropped_train} were longer than max_seq_len={config.max_seq_len}"
            )
        if len(self.val_data) < config.min_val_examples:
            raise NotEnoughData(
                f"{len(self.val_data)} usable validation examples (need {config.min_val_examples}): "
                "an adapter that cannot be validated is never promoted, so it is not trained"
            )
        self.accelerator = make_accelerator(config.precision)
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.device = self.accelerator.device
        if self.world > 1 and next(loaded.model.parameters()).device != self.device:
            # Under `accelerate launch` every process loaded its copy onto GPU 0; each trains on its own GPU.
            loaded.model.to(self.device)
            loaded.device = self.device
            if getattr(loaded.model, "hf_device_map", None):
                del loaded.model.hf_device_map

        torch.manual_seed(config.seed)  # the LoRA init, then dropout, draw from here
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        )
        try:
            peft_model = get_peft_model(loaded.model, lora)
        except ValueError as exc:
            raise ConfigError(f"cannot put LoRA on {list(config.target_modules)}: {exc}") from exc
        self._params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self._params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.step_size = config.batch_size * config.grad_accum * self.world
        self.steps_per_epoch = math.ceil(len(self.train_data) / self.step_size)
        full = self.steps_per_epoch * config.epochs
        self.total_steps = min(full, config.max_steps) if config.max_steps else full
        warmup = int(config.warmup_ratio * self.total_steps)
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, self.total_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            peft_model, optimizer, scheduler
        )
        self.model.train()
        self.eval_interval = config.eval_every or self.steps_per_epoch
        self.checkpoint_interval = config.checkpoint_every or self.eval_interval
        self.state = TrainerState()
        self.best: dict[str, torch.Tensor] | None = None
        self.fingerprint = fingerprint(self.train_data) + fingerprint(self.val_data)
        self.resumed_from: int | None = None
        self._orders: dict[int, list[int]] = {}

    # --- model access -------------------------------------------------------------------------------

    @property
    def peft_model(self) -> PeftModel:
        return self.accelerator.unwrap_model(self.model)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.peft_model.named_parameters() if p.requires_grad}

    def load_trainable(self, tensors: dict[str, torch.Tensor]) -> None:
        params = dict(self.peft_model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
        if missing:
            raise CheckpointError(f"checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]})")
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))

    def save_adapter(self, directory: Path) -> None:
        """The current weights in peft's format (adapter_config.json + adapter_model.safetensors)."""
        self.peft_model.save_pretrained(directory, safe_serialization=True)

    # --- data order ---------------------------------------------------------------------------------

    def epoch_order(self, epoch: int) -> list[int]:
        """A permutation seeded by (seed, epoch); with ``group_by_length``, each run of 16 steps' examples
        is sorted by length (longest first) so a batch pads little, while the runs stay in random order."""
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.train_data), generator=generator).tolist()
            if self.config.group_by_length:
                chunk = self.step_size * 16
                lengths = [len(e.input_ids) for e in self.train_data]
                order = [
                    i
                    for start in range(0, len(order), chunk)
                    for i in sorted(order[start : start + chunk], key=lambda j: -lengths[j])
                ]
            self._orders = {epoch: order}
        return self._orders[epoch]

    def step_examples(self, step: int) -> list[EncodedExample]:
        """The examples of optimizer step ``step`` (0-based), all processes together."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        return [self.train_data[i] for i in order[index * self.step_size : (index + 1) * self.step_size]]

    # --- one optimizer step -------------------------------------------------------------------------

    def accumulate(self, examples: Sequence[EncodedExample]) -> float:
        """Forward + backward over one step's examples (this process's share); returns the mean token loss."""
        total_tokens = max(1, sum(e.n_targets for e in examples))
        bs = self.config.batch_size
        micro = [examples[i : i + bs] for i in range(0, len(examples), bs)]
        mine = micro[self.rank :: self.world]
        scale = 1.0
        if not mine:  # a short last step with fewer micro-batches than processes: join the all-reduce with 0
            mine, scale = micro[:1], 0.0
        loss_sum = torch.zeros((), device=self.device)
        for i, batch_examples in enumerate(mine):
            batch = collate(batch_examples, self.pad_id, self.device)
            last = i == len(mine) - 1
            sync = (
                contextlib.nullcontext() if last or self.world == 1 else self.accelerator.no_sync(self.model)
            )
            with sync:
                nll, _ = token_nll(self.model, batch)
                loss = nll.sum() * (scale * self.world / total_tokens)
                self.accelerator.backward(loss)
            loss_sum += nll.sum().detach() * scale
        if self.world > 1:
            loss_sum = self.accelerator.reduce(loss_sum, "sum")
        return float(loss_sum) / total_tokens

    def optimizer_step(self) -> None:
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self._params, self.config.max_grad_norm)
        self.optimizer.step()
        if not self.accelerator.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped this step
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean negative log-likelihood per answer token on the held-out set (None when there is none)."""
        if not self.val_data:
            return None
        self.model.eval()
        bs = self.config.batch_size
        batches = [self.val_data[i : i + bs] for i in range(0, len(self.val_data), bs)]
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        for batch_examples in batches[self.rank :: self.world]:
            nll, counts = token_nll(self.model, collate(batch_examples, self.pad_id, self.device))
            total += torch.stack([nll.sum().double(), counts.sum().double()])
        if self.world > 1:
            total = self.accelerator.reduce(total, "sum")
        self.model.train()
        return float(total[0] / total[1].clamp(min=1))

    # --- checkpoints --------------------------------------------------------------------------------

    def _state_record(self) -> dict[str, Any]:
        record = self.state.to_json()
        record.update(
            fingerprint=self.fingerprint,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            world_size=self.world,
            config=self.config.to_json(),
        )
        return record

    def checkpoint(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        path = None
        if self.accelerator.is_main_process:
            scaler = self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None
            path = save_checkpoint(
                self.run_dir,
                state=self._state_record(),
                trainable=self.trainable_state(),
                best=self.best,
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=scaler,
                save_adapter=self.save_adapter,
                keep=self.config.keep_checkpoints,
            )
        self.accelerator.wait_for_everyone()
        return path

    def resume(self, path: Path | str) -> int:
        """Continue from a checkpoint (a checkpoint dir, or a run dir: its newest); returns its step."""
        ckpt = load_checkpoint(path)
        saved = ckpt.state
        saved_config = saved.get("config", {})
        mine = self.config.to_json()
        differ = [k for k in RESUME_KEYS if saved_config.get(k) != mine.get(k)]
        if differ:
            raise CheckpointError(
                f"checkpoint {ckpt.path} was written with other settings ({', '.join(differ)}); "
                "resume with the run's own config"
            )
        if saved.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"the training data differs from the data checkpoint {ckpt.path} was trained on"
            )
        if saved.get("world_size", 1) != self.world:
            raise CheckpointError(
                f"checkpoint was written by {saved.get('world_size')} processes, now {self.world}"
            )
        self.load_trainable(ckpt.trainable)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.scheduler)
        if ckpt.scaler is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(ckpt.scaler)
        self.best = ckpt.best
        self.state = TrainerState(**{k: saved[k] for k in TrainerState.__slots__ if k in saved})
        restore_rng(ckpt.rng)
        self.resumed_from = ckpt.step
        clean_partial(self.run_dir)
        if self.accelerator.is_main_process:  # the curve as of the checkpoint: later entries were lost work
            self._rewrite_history()
        log.info("resumed %s at step %d/%d", self.run_dir, ckpt.step, self.total_steps)
        return ckpt.step

    # --- the loop -----------------------------------------------------------------------------------

    def _record(self, entry: dict[str, Any]) -> None:
        self.state.history.append(entry)
        if self.accelerator.is_main_process:
            with (self.run_dir / HISTORY_FILE).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    def _rewrite_history(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / HISTORY_FILE).open("w", encoding="utf-8") as fh:
            for entry in self.state.history:
                fh.write(json.dumps(entry) + "\n")

    def _after_eval(self, val: float) -> None:
        state, config = self.state, self.config
        if state.best_val_loss is None or val < state.best_val_loss:
            state.best_val_loss, state.best_step = val, state.global_step
            self.best = self.trainable_state()
        if state.patience_ref is None or val < state.patience_ref - config.min_delta:
            state.patience_ref, state.bad_evals = val, 0
        else:
            state.bad_evals += 1
        if config.early_stopping and state.bad_evals >= config.patience:
            state.stopped_early = True

    def train(self, until_step: int | None = None) -> TrainResult:
        """Run to the end (or to early stopping). ``until_step`` pauses after that optimizer step instead,
        with a checkpoint there (a time-boxed job continues later with :meth:`resume`)."""
        from tqdm.auto import tqdm

        started = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resumed_from is None and self.accelerator.is_main_process:
            self._rewrite_history()
        state = self.state
        bar = tqdm(
            total=self.total_steps,
            initial=state.global_step,
            desc=f"train {self.run_dir.name}",
            unit="step",
            disable=not self.config.progress or not self.accelerator.is_local_main_process,
        )
        try:
            stop_at = min(self.total_steps, until_step) if until_step is not None else self.total_steps
            while state.global_step < stop_at and not state.stopped_early:
                step_started = time.perf_counter()
                loss = self.accumulate(self.step_examples(state.global_step))
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer_step()
                state.global_step += 1
                step = state.global_step
                self._record(
                    {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "train_loss": loss,
                     "lr": lr, "seconds": round(time.perf_counter() - step_started, 3)}
                )  # fmt: skip
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                if step % self.eval_interval == 0 or step == self.total_steps:
                    val = self.evaluate()
                    if val is not None:
                        self._record(
                            {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "val_loss": val}
                        )
                        self._after_eval(val)
                        bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}")
                if step % self.checkpoint_interval == 0 or step == stop_at or state.stopped_early:
                    self.checkpoint()
        finally:
            bar.close()
        if self.best is not None:
            self.load_trainable(self.best)  # keep the best, not the last
        adapter_dir = self.run_dir / ADAPTER_DIR
        if self.accelerator.is_main_process:
            _replace_dir(adapter_dir, self.save_adapter)
        self.accelerator.wait_for_everyone()
        return TrainResult(
            run_dir=self.run_dir,
            adapter_dir=adapter_dir,
            best_val_loss=state.best_val_loss,
            best_step=state.best_step,
            final_step=state.global_step,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            stopped_early=state.stopped_early,
            history=list(state.history),
            seconds=time.perf_counter() - started,
            train_examples=len(self.train_data),
            val_examples=len(self.val_data),
            dropped_too_long=self.dropped,
            resumed_from=self.resumed_from,
        )

    def release(self) -> None:
        """Take the LoRA layers out again: ``loaded.model`` is the plain base model afterwards."""
        model = self.peft_model
        self.accelerator.free_memory()
        base = model.unload()
        base.eval()
        self.loaded.model = base


def _replace_dir(target: Path, write: Callable[[Path], object]) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    write(tmp)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(tmp, target)
