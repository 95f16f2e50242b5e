"""Greedy decoding speed of the generation core, against transformers and llama.cpp, and batched throughput.

1. Single stream: decode tokens/s for ``--new-tokens`` greedy tokens (stop tokens ignored so every run
   does the same work) on the embedded SmolLM2-135M in ``--dtype`` with ``--threads`` threads:
   ``Generator`` (this project), transformers' ``generate`` (reference), and llama.cpp through
   llama-cpp-python on the very GGUF the model comes from (the physical-limit reference; skipped with a
   message when ``llama_cpp`` is not installed). Target: Generator >= 0.5x llama.cpp.
   The Generator runs twice: on the dense ``--dtype`` model (``HEXCORE_ENGINE_QUANTIZATION=none``) and, unless
   ``--quantization none``, with weight-only int4 layers (engine.quantize: the CPU default, ``auto``), which
   the throughput part then uses. transformers runs on the dense model.
2. Throughput: ``--jobs`` concurrent chat requests spread over five LoRA adapters and the base model
   (random LoRA r=8 on q_proj/v_proj, the shape of the trained experts), batched in one ``run_batch``
   vs run one after another. Target: batched >= 3x sequential.

    python bench/bench_generation.py
    python bench/bench_generation.py --new-tokens 128 --threads 2 --jobs 16 --batch-size 16
    python bench/bench_generation.py --skip-throughput     # single stream only
    python bench/bench_generation.py --skip-throughput --quantization none   # dense only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from engine.api import Expert  # noqa: E402
from engine.generation import Generator, GenJob, GenStats  # noqa: E402
from engine.model_loader import LoadedModel, embedded_gguf_path, load_base_model  # noqa: E402
from engine.prompts import build_messages  # noqa: E402
from hexcore.settings import EngineSettings  # noqa: E402

QUESTIONS = [
    (
        "How does trample work?",
        "702.19b If an attacking creature with trample is blocked, it assigns lethal damage to its blockers and the rest to the player.",
    ),
    (
        "What does deathtouch do?",
        "702.2b A creature dealt damage by a source with deathtouch since the last state check is destroyed.",
    ),
    (
        "Can I respond to a mana ability?",
        "605.3b An activated mana ability doesn't go on the stack, so it can't be responded to.",
    ),
    (
        "When does a creature with 0 toughness die?",
        "704.5f A creature with toughness 0 or less is put into its owner's graveyard.",
    ),
    (
        "What is first strike?",
        "702.7b A combat damage step with first strike: only first and double strikers deal damage.",
    ),
    (
        "How does flying work?",
        "702.9b A creature with flying can't be blocked except by creatures with flying or reach.",
    ),
    (
        "What does hexproof mean?",
        "702.11b Hexproof on a permanent: it can't be the target of spells or abilities opponents control.",
    ),
    (
        "What happens when two legends share a name?",
        "704.5j The legend rule: its controller chooses one and the rest go to the graveyard.",
    ),
]


def median_rate(runs: list[float]) -> str:
    return f"{statistics.median(runs):6.1f} tok/s (best {max(runs):.1f}, runs {', '.join(f'{r:.1f}' for r in runs)})"


def bench_generator(generator: Generator, ids: list[int], new_tokens: int, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        _, out, stats = generator.generate(ids, max_new_tokens=new_tokens, eos_token_ids=[])
        assert len(out) == new_tokens
        rates.append(stats.decode_tok_s)
    return rates


def bench_transformers(model: object, ids: list[int], new_tokens: int, repeats: int) -> list[float]:
    """Decode rate = (new_tokens - 1) / (time(new_tokens) - time(1 token)): prefill cancels out."""
    tensor = torch.tensor([ids])

    def timed(n: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(tensor, max_new_tokens=n, min_new_tokens=n, do_sample=False)  # type: ignore[attr-defined]
        return time.perf_counter() - started

    rates = []
    for _ in range(repeats):
        first, full = timed(1), timed(new_tokens)
        rates.append((new_tokens - 1) / (full - first))
    return rates


def bench_llama_cpp(ids: list[int], new_tokens: int, threads: int, repeats: int) -> list[float] | None:
    try:
        import llama_cpp
    except ImportError:
        print(
            "  llama.cpp: SKIPPED (llama-cpp-python is not installed: `pip install llama-cpp-python`, ~5 min build)"
        )
        return None
    llm = llama_cpp.Llama(
        model_path=str(embedded_gguf_path()),
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    rates = []
    for _ in range(repeats):
        llm.reset()
        marks = []
        for _token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            marks.append(time.perf_counter())
            if len(marks) == new_tokens:
                break
        rates.append((new_tokens - 1) / (marks[-1] - marks[0]))
    print(f"  llama.cpp: llama-cpp-python {llama_cpp.__version__}, {embedded_gguf_path().name}")
    return rates


def add_adapters(loaded: object, names: list[str]) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(loaded.model, config, adapter_name=names[0])  # type: ignore[attr-defined]
    for name in names[1:]:
        model.add_adapter(name, config)
    model.eval()
    loaded.model = model  # type: ignore[attr-defined]


def throughput(generator: Generator, prompts: list[tuple[list[int], str | None]], new_tokens: int) -> None:
    def jobs(sink: list[GenStats]) -> list[GenJob]:
        return [
            GenJob(
                input_ids=ids,
                adapter_name=adapter,
                max_new_tokens=new_tokens,
                eos_token_ids=[],
                on_done=lambda _ids, stats: sink.append(stats),
            )
            for ids, adapter in prompts
        ]

    total = len(prompts) * new_tokens
    sequential: list[GenStats] = []
    started = time.perf_counter()
    for job in jobs(sequential):
        generator.run_batch([job])
    seq_s = time.perf_counter() - started

    batched: list[GenStats] = []
    started = time.perf_counter()
    generator.run_batch(jobs(batched))
    batch_s = time.perf_counter() - started

    prompt_tokens = sum(len(ids) for ids, _ in prompts)
    print(
        f"  {len(prompts)} jobs x {new_tokens} new tokens, {prompt_tokens} prompt tokens in all, adapters "
        f"{sorted({a or '__base__' for _, a in prompts})}"
    )
    print(
        f"  sequential: {seq_s:6.1f} s  {total / seq_s:6.1f} tok/s  (prefill {sum(s.prefill_ms for s in sequential) / 1000:.1f} s)"
    )
    print(
        f"  batched:    {batch_s:6.1f} s  {total / batch_s:6.1f} tok/s  (prefill {sum(s.prefill_ms for s in batched) / 1000:.1f} s, "
        f"max batch {max(s.batch_size for s in batched)}, median TTFT {statistics.median(s.ttft_ms for s in batched):.0f} ms)"
    )
    print(f"  speed-up: {seq_s / batch_s:.1f}x (target >= 3x)")


def quantized_model(args: argparse.Namespace) -> object:
    """A second copy of the model, loaded as ``HEXCORE_ENGINE_QUANTIZATION=args.quantization`` would."""
    settings = EngineSettings(
        model="embedded", dtype=args.dtype, threads=args.threads, quantization=args.quantization
    )
    return load_base_model(settings)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--quantization",
        choices=["int4", "none"],
        default="int4",
        help="also measure the Generator on the int4-quantized model, the CPU default (and use it for the "
        "throughput part); none: the dense model only",
    )
    return parser.parse_args()


def single_stream(
    args: argparse.Namespace, generator: Generator, loaded: LoadedModel, quantized_loaded: LoadedModel | None
) -> None:
    """One greedy stream: Generator (dense and quantized), transformers' generate() and llama.cpp."""
    question, context = QUESTIONS[0]
    ids = generator.encode(build_messages(Expert.EXPLAIN, question, context))
    print(f"single stream: {args.new_tokens} greedy tokens after a {len(ids)}-token prompt, {args.dtype}")
    generator.generate(ids, max_new_tokens=8, eos_token_ids=[])  # warm-up
    ours = bench_generator(generator, ids, args.new_tokens, args.repeats)
    print(f"  Generator ({args.dtype}):      {median_rate(ours)}")
    reference = bench_transformers(loaded.model, ids, args.new_tokens, args.repeats)
    print(f"  transformers generate(): {median_rate(reference)}")
    quantized = None
    if args.quantization:
        quantized_generator = Generator(quantized_loaded, max_batch_size=args.batch_size)
        quantized_generator.generate(ids, max_new_tokens=8, eos_token_ids=[])  # warm-up
        quantized = bench_generator(quantized_generator, ids, args.new_tokens, args.repeats)
        print(f"  Generator {args.quantization}:          {median_rate(quantized)}")
    llama = bench_llama_cpp(ids, args.new_tokens, args.threads, args.repeats)
    if llama is not None:
        print(f"  llama.cpp (Q4_1 GGUF):   {median_rate(llama)}")
        print(
            f"  Generator / llama.cpp: {statistics.median(ours) / statistics.median(llama):.2f}x (target >= 0.5x)"
        )
        if quantized is not None:
            print(
                f"  Generator {args.quantization} / llama.cpp: "
                f"{statistics.median(quantized) / statistics.median(llama):.2f}x (target >= 0.5x)"
            )
    print(f"  Generator / transformers: {statistics.median(ours) / statistics.median(reference):.2f}x")
    if quantized is not None:
        print(
            f"  Generator {args.quantization} / Generator: "
            f"{statistics.median(quantized) / statistics.median(ours):.2f}x"
        )
    print(f"  load average after the single-stream runs: {os.getloadavg()[0]:.1f}")


def batched_throughput(args: argparse.Namespace, loaded: LoadedModel) -> None:
    """Many jobs over every expert's adapter (and none), batched by the Generator."""
    experts = [e.value for e in Expert]
    add_adapters(loaded, experts)
    generator = Generator(loaded, max_batch_size=args.batch_size)
    adapters: list[str | None] = [*experts, None]
    prompts = []
    for i in range(args.jobs):
        question, context = QUESTIONS[i % len(QUESTIONS)]
        adapter = adapters[i % len(adapters)]
        ids = generator.encode(build_messages(adapter or Expert.EXPLAIN, question, context))
        prompts.append((ids, adapter))
    generator.generate(prompts[0][0], adapter_name=prompts[0][1], max_new_tokens=4)  # warm-up
    print(f"throughput: batch size {args.batch_size}, {args.dtype}, quantization {args.quantization}")
    throughput(generator, prompts, args.new_tokens)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.quantization == "none":
        args.quantization = None
    dense = EngineSettings(model="embedded", dtype=args.dtype, threads=args.threads, quantization="none")
    loaded = load_base_model(dense)
    generator = Generator(loaded, max_batch_size=args.batch_size)
    quantized_loaded = quantized_model(args) if args.quantization else None
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, threads {args.threads}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if not args.skip_single:
        single_stream(args, generator, loaded, quantized_loaded)
    if not args.skip_throughput:
        batched_throughput(args, quantized_loaded if quantized_loaded is not None else loaded)


if __name__ == "__main__":
    main()
