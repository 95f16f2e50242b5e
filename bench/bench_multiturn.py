"""Second-turn time to first token with a ~1,000-token history: KV-cache session reuse vs a full prefill.

A conversation of real Comprehensive Rules passages (from the rules data) and short answers is built up to
about ``--history-tokens`` tokens. Turn N-1 runs with a session (its prompt and answer are cached), then
turn N (the history + a new question) runs twice: from its session, and from scratch on a generator
without sessions. Repeated ``--repeats`` times; medians are reported. Target: reuse >= 5x faster.

    python bench/bench_multiturn.py                        # engine defaults (int4, cores - 1 threads)
    python bench/bench_multiturn.py --history-tokens 2000 --threads 2 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from engine.generation import Generator  # noqa: E402
from engine.model_loader import load_base_model  # noqa: E402
from engine.prompts import build_messages, next_history  # noqa: E402
from engine.sessions import SessionStore  # noqa: E402
from hexcore.settings import EngineSettings, PathSettings  # noqa: E402

QUESTIONS = [
    ("How does trample work?", "702.19"),
    ("And with deathtouch?", "702.2"),
    ("What does first strike change?", "702.7"),
    ("What about double strike?", "702.4"),
    ("How does lifelink interact with that?", "702.15"),
    ("And vigilance?", "702.20"),
    ("Can a creature with menace be blocked by one creature?", "702.111"),
    ("What does reach do against flying?", "702.17"),
]
NEW_QUESTION = (
    "So which of these keywords matter when my trampler is blocked by a deathtouch creature?",
    "702.19c",
)


def rules_text(rules_file: Path, prefix: str, max_chars: int = 900) -> str:
    """The rule ``prefix`` and its sub-rules, verbatim from the rules file (a realistic prompt context)."""
    pattern = re.compile(rf"^{re.escape(prefix)}[a-z.]?\s")
    lines = [line for line in rules_file.read_text(encoding="utf-8-sig").splitlines() if pattern.match(line)]
    return "\n".join(lines)[:max_chars]


def build_history(generator: Generator, rules_file: Path, target_tokens: int) -> list[dict[str, str]]:
    """Earlier turns (question + real rules context, canned short answer) until the prompt is ~target."""
    history: list[dict[str, str]] = []
    for i in range(100):
        question, rule = QUESTIONS[i % len(QUESTIONS)]
        messages = build_messages("reason", question, rules_text(rules_file, rule), history)
        history = next_history(messages, f"Per CR {rule}, see the quoted rule above.")
        if len(generator.encode(messages)) >= target_tokens:
            break
    return history


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history-tokens", type=int, default=1000)
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated on turn N-1 (cached)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--new-context-chars", type=int, default=400, help="rules text retrieved for the new question"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 1) - 1),
        help="torch threads (default: the engine's on CPU, cores - 1)",
    )
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument(
        "--quantization",
        default="auto",
        choices=["auto", "int4", "none"],
        help="as HEXCORE_ENGINE_QUANTIZATION (default auto: int4 decode on CPU, prefill dense)",
    )
    parser.add_argument(
        "--plots",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "docs" / "img",
        help="write the time-to-first-token chart (PNG) here",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()

    torch.set_num_threads(args.threads)
    loaded = load_base_model(
        EngineSettings(
            model="embedded", dtype=args.dtype, threads=args.threads, quantization=args.quantization
        )
    )
    rules_file = max((PathSettings().data_dir / "rules").glob("*.txt"))
    sessions = SessionStore(1 << 30, ttl_s=3600, max_sessions=args.repeats + 1)
    with_sessions, from_scratch = Generator(loaded, sessions=sessions), Generator(loaded)

    history = build_history(from_scratch, rules_file, args.history_tokens - 60)
    *earlier, last_user, _ = history
    previous = build_messages("reason", "", "", earlier)[:-1] + [last_user]  # turn N-1's messages
    question, rule = NEW_QUESTION
    context = rules_text(rules_file, rule, args.new_context_chars)
    from_scratch.generate("warm-up", max_new_tokens=4)

    reuse_ms, scratch_ms, reused, prompt_tokens = [], [], [], 0
    for r in range(args.repeats):
        sid = f"bench-{r}"
        # Turn N-1 with a session: its prompt and the generated answer end up cached.
        answer = with_sessions.generate(previous, max_new_tokens=args.new_tokens, session_id=sid)[0]
        turn_n = build_messages("reason", question, context, next_history(previous, answer))
        ids = with_sessions.encode(turn_n)
        prompt_tokens = len(ids)
        _, _, stats = with_sessions.generate(ids, max_new_tokens=1, session_id=sid)
        reuse_ms.append(stats.ttft_ms)
        reused.append(stats.reused_tokens)
        _, _, stats = from_scratch.generate(ids, max_new_tokens=1)
        scratch_ms.append(stats.ttft_ms)

    reuse, scratch = statistics.median(reuse_ms), statistics.median(scratch_ms)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads {args.threads}"
    )
    print(
        f"model: {loaded.name} {args.dtype}, quantization {loaded.quantization or 'none'}; turn N prompt {prompt_tokens} tokens, reused {statistics.median(reused):.0f}"
    )
    print(f"time to first token, median of {args.repeats}:")
    print(
        f"  from scratch (full prefill): {scratch:8.1f} ms   (all: {', '.join(f'{x:.0f}' for x in scratch_ms)})"
    )
    print(
        f"  with session reuse:          {reuse:8.1f} ms   (all: {', '.join(f'{x:.0f}' for x in reuse_ms)})"
    )
    print(f"  speed-up: {scratch / reuse:.1f}x (target >= 5x)")
    print(f"session store: {sessions.stats()}")
    if args.plots:
        from evaluation.plots import plot_latency_distributions

        chart = plot_latency_distributions(
            {"from scratch": scratch_ms, "session reuse": reuse_ms},
            args.plots / "multiturn-ttft.png",
            f"Second-turn time to first token, {prompt_tokens}-token prompt",
        )
        print(f"chart: {chart}")


if __name__ == "__main__":
    main()
