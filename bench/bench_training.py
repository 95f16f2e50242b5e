"""Training benchmark: per-expert held-out perplexity base vs adapter, time per epoch, early stopping vs fixed.

    python bench/bench_training.py                                   # all experts, the default reduced setup
    python bench/bench_training.py --experts reason explain --train-examples 64 --json out.json
    python bench/bench_training.py --skip-experts --es-expert reason  # only early stopping vs fixed epochs

For each expert, on its rules-derived dataset (``training.rules_data``; no feedback or admin files: a fresh
state directory), capped to ``--train-examples`` / ``--val-examples`` examples that fit ``--max-seq-len``:

* one epoch of LoRA training on the real embedded model (SmolLM2-135M-Instruct, bf16 weights, fp32 LoRA),
  timed (optimizer steps only, evaluation excluded), and the time one epoch of the *full* rules-derived
  set would take at the measured rate (train examples per second);
* held-out perplexity of the base model and of the new adapter on the expert's validation split.

Then, for ``--es-expert``: ``--es-epochs`` fixed epochs vs the same run with early stopping (``--es-patience``,
``--es-min-delta``, default the shipped config's 2 and 0.005; evaluated every half epoch): optimizer steps, seconds, the best validation loss of each,
and the validation loss the fixed run ends with.

Results are printed and written as JSON after each expert (a partial run keeps what it measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from hexcore.settings import EngineSettings, PathSettings, Settings  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.datasets import build_expert_dataset, load_rules_document  # noqa: E402
from training.trainer import LoraTrainer  # noqa: E402
from training.validation import AdapterEvaluator  # noqa: E402

EXPERTS = ("reason", "explain", "teach", "predict", "retrospect")


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg(),
    }


def train_seconds(history: list[dict]) -> float:
    return sum(h.get("seconds", 0.0) for h in history if "train_loss" in h)


def bench_expert(expert: str, loaded, settings: Settings, doc, config: TrainConfig, workdir: Path) -> dict:
    full = build_expert_dataset(
        settings,
        expert,
        config=dataclasses.replace(config, max_train_examples=None, max_val_examples=None),
        doc=doc,
        tokenizer=loaded.tokenizer,
    )
    data = build_expert_dataset(settings, expert, config=config, doc=doc, tokenizer=loaded.tokenizer)
    started = time.perf_counter()
    trainer = LoraTrainer(loaded, data.train, data.val, config, workdir / expert, prompt_experts=[expert])
    try:
        result = trainer.train()
    finally:
        trainer.release()
    wall = time.perf_counter() - started
    seconds = train_seconds(result.history)
    with AdapterEvaluator(loaded, config.max_seq_len, config.batch_size) as evaluator:
        base = evaluator.evaluate(None, data.val, [expert])
        adapter = evaluator.evaluate(result.adapter_dir, data.val, [expert])
    rate = result.train_examples / seconds if seconds else 0.0
    return {
        "expert": expert,
        "train_examples": result.train_examples,
        "val_examples": base.examples,
        "full_train_examples": len(full.train),
        "steps": result.final_step,
        "epoch_train_seconds": round(seconds, 1),
        "wall_seconds_incl_eval": round(wall, 1),
        "examples_per_second": round(rate, 3),
        "full_epoch_minutes_estimate": round(len(full.train) / rate / 60, 1) if rate else None,
        "base_perplexity": round(base.perplexity, 3),
        "adapter_perplexity": round(adapter.perplexity, 3),
        "reduction": round(1 - adapter.perplexity / base.perplexity, 4),
        "val_curve": [round(h["val_loss"], 4) for h in result.history if "val_loss" in h],
    }


def bench_early_stopping(
    expert: str,
    loaded,
    settings: Settings,
    doc,
    config: TrainConfig,
    epochs: int,
    workdir: Path,
    patience: int,
    min_delta: float,
) -> dict:
    data = build_expert_dataset(settings, expert, config=config, doc=doc, tokenizer=loaded.tokenizer)
    steps_per_epoch = -(-len(data.train) // (config.batch_size * config.grad_accum))
    base = config.replace(epochs=epochs, eval_every=max(1, steps_per_epoch // 2), checkpoint_every=10**6)
    out = {}
    for name, cfg in (
        ("fixed", base.replace(early_stopping=False)),
        ("early_stopping", base.replace(early_stopping=True, patience=patience, min_delta=min_delta)),
    ):
        trainer = LoraTrainer(
            loaded, data.train, data.val, cfg, workdir / f"es-{name}", prompt_experts=[expert]
        )
        started = time.perf_counter()
        try:
            result = trainer.train()
        finally:
            trainer.release()
        vals = [h["val_loss"] for h in result.history if "val_loss" in h]
        out[name] = {
            "steps": result.final_step,
            "total_steps": result.total_steps,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "train_seconds": round(train_seconds(result.history), 1),
            "best_val_loss": round(min(vals), 4),
            "final_val_loss": round(vals[-1], 4),
            "stopped_early": result.stopped_early,
            "val_curve": [round(v, 4) for v in vals],
        }
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experts", nargs="+", default=list(EXPERTS), choices=EXPERTS)
    parser.add_argument("--skip-experts", action="store_true", help="only the early stopping comparison")
    parser.add_argument("--train-examples", type=int, default=32)
    parser.add_argument("--val-examples", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--es-expert", default="reason", choices=(*EXPERTS, "none"))
    parser.add_argument("--es-epochs", type=int, default=4)
    parser.add_argument("--es-patience", type=int, default=TrainConfig().patience)
    parser.add_argument("--es-min-delta", type=float, default=TrainConfig().min_delta)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy CPU)"
    )
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args()


def bench_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        grad_accum=1,
        epochs=1,
        max_seq_len=args.max_seq_len,
        max_train_examples=args.train_examples,
        max_val_examples=args.val_examples,
        warmup_ratio=0.1,
        progress=False,
    )


def print_expert(expert: str, row: dict) -> None:
    print(
        f"{expert:<11} base ppl {row['base_perplexity']:8.3f} -> adapter {row['adapter_perplexity']:8.3f} "
        f"(perplexity {-row['reduction']:+.1%}); epoch of {row['train_examples']} ex in {row['epoch_train_seconds']} s "
        f"({row['examples_per_second']} ex/s; full {row['full_train_examples']} ex ~{row['full_epoch_minutes_estimate']} min)",
        flush=True,
    )


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings(paths=PathSettings(state_dir=Path(tempfile.mkdtemp(prefix="bench-training-"))))
    workdir = settings.paths.state_dir / "runs"
    from engine.model_loader import load_base_model

    loaded = load_base_model(
        # Dense weights: training's forward/backward run on many rows, where int4 layers use them anyway.
        EngineSettings(model="embedded", dtype=args.dtype, threads=args.threads, quantization="none"),
        PathSettings(),
    )
    doc = load_rules_document(settings)
    config = bench_config(args)
    results: dict = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "config": config.to_json(),
        "experts": {},
    }

    def save() -> None:
        results["machine"]["load_average_end"] = os.getloadavg()
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))

    for expert in args.experts if not args.skip_experts else ():
        results["experts"][expert] = row = bench_expert(expert, loaded, settings, doc, config, workdir)
        print_expert(expert, row)
        save()
    if args.es_expert != "none":
        es = bench_early_stopping(
            args.es_expert,
            loaded,
            settings,
            doc,
            config,
            args.es_epochs,
            workdir,
            args.es_patience,
            args.es_min_delta,
        )
        results["early_stopping"] = {
            "expert": args.es_expert,
            "patience": args.es_patience,
            "min_delta": args.es_min_delta,
            **es,
        }
        for name, row in es.items():
            print(
                f"{name:<15} {row['steps']}/{row['total_steps']} steps, {row['train_seconds']} s, best val {row['best_val_loss']}, final val {row['final_val_loss']}",
                flush=True,
            )
        save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
