"""Bot under load: N concurrent slash commands through the real bot, a fake Discord and a fake engine.

Every interaction is a real ``discord.Interaction`` dispatched through the command tree (the test
harness, ``tests/bot/harness/``); the engine is the fake one from ``tests/bot/fake_engine.py`` (real
rules data, no model) with a random delay per request and a bounded queue that refuses work when full,
as the real engine does. Feedback goes into a real SQLite file through ``bot.storage.FeedbackStore``.

Checks (exit code 1 when one fails):
  * every interaction is acknowledged (deferred or answered "busy") within Discord's 3 s;
  * every one is answered or told busy; no exception escapes (nothing logged at ERROR);
  * every answer is stored, and after one vote per answer (buttons and reactions at once) the vote
    rows equal the answers: no feedback row lost.

Usage (from the project root)::

    python bench/bench_bot_load.py --interactions 200 --capacity 32 --max-delay 0.5 [--spread 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bot import limits, views  # noqa: E402
from bot.client import HexcoreBot  # noqa: E402
from bot.storage import FeedbackStore  # noqa: E402
from engine.api import AnswerRequest, Event  # noqa: E402
from engine.errors import EngineOverloaded  # noqa: E402
from hexcore.settings import BotSettings, PathSettings, Settings  # noqa: E402
from tests.bot.fake_engine import FakeEngine, load_fake_data  # noqa: E402
from tests.bot.harness import DiscordHarness, FakeClock, InteractionRecord  # noqa: E402

ANSWER_MARK = "Trample lets the attacker"


@dataclass
class LoadEngine(FakeEngine):
    """The fake engine with a bounded queue (refuses at once when full) and a random delay per request."""

    rng: random.Random = field(default_factory=random.Random)
    min_delay_s: float = 0.0
    max_delay_s: float = 0.5
    refused: int = 0
    peak: int = 0

    async def generate(self, request: AnswerRequest) -> AsyncIterator[Event]:
        if self.active >= self.queue_capacity:
            self.refused += 1
            raise EngineOverloaded(self.active)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.rng.uniform(self.min_delay_s, self.max_delay_s))
        finally:
            self.active -= 1
        async for event in super().generate(request):
            yield event


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q, method="nearest")) if values else float("nan")


async def loop_lag(samples: list[float], stop: asyncio.Event, interval: float = 0.01) -> None:
    """How late the event loop wakes a sleeper: the bot must never block it."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(interval)
        samples.append(loop.time() - start - interval)


def classify(rec: InteractionRecord) -> str:
    if any(ANSWER_MARK in m.text() for m in rec.public_messages()):
        return "answered"
    if "busy" in rec.ephemeral_text():
        return "busy"
    return "other"


@dataclass
class Measured:
    """What one load run observed; :func:`report` turns it into lines and pass/fail checks."""

    recs: list[InteractionRecord]
    escaped: list[BaseException]
    answer_wall: float
    vote_wall: float = 0.0
    lag: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    batches: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kinds = [classify(r) for r in self.recs]
        self.acks = [r.replies[0].elapsed_s for r in self.recs if r.acknowledged and r.replies]
        self.answered = [r for r, k in zip(self.recs, self.kinds, strict=True) if k == "answered"]
        self.finals = [r.replies[-1].elapsed_s for r in self.answered]


async def ask_all(h: DiscordHarness, args: argparse.Namespace) -> Measured:
    """Every member asks once, at its arrival time; waits for all the answers."""
    t0 = time.perf_counter()
    arrival_rng = random.Random(args.seed + 1)
    arrivals = sorted(arrival_rng.uniform(0, args.spread) for _ in range(args.interactions))

    async def ask(i: int) -> InteractionRecord:
        await asyncio.sleep(arrivals[i])
        rec = await h.slash("ask", question=f"How does trample work? #{i}", user=i, wait=False)
        return await rec.wait(120)

    results = await asyncio.gather(*(ask(i) for i in range(args.interactions)), return_exceptions=True)
    answer_wall = time.perf_counter() - t0
    await h.settle(60)  # answers are stored by background tasks
    escaped = [r for r in results if isinstance(r, BaseException)]
    return Measured([r for r in results if isinstance(r, InteractionRecord)], escaped, answer_wall)


async def vote_all(h: DiscordHarness, answered: list[InteractionRecord]) -> tuple[list[BaseException], float]:
    """One vote per answer: half by button, half by reaction, all at once, each by another member."""
    t1 = time.perf_counter()
    votes = []
    for i, rec in enumerate(answered):
        message = rec.public_messages()[0]
        voter = (rec_user_index(h, rec) + 1) % len(h.members)
        if i % 2:
            votes.append(click(h, message, voter))
        else:
            votes.append(h.react(message, "👎", user=voter))
    vote_results = await asyncio.gather(*votes, return_exceptions=True)
    return [r for r in vote_results if isinstance(r, BaseException)], time.perf_counter() - t1


async def run(args: argparse.Namespace) -> int:
    data_dir = PathSettings().data_dir
    state_dir = Path(tempfile.mkdtemp(prefix="hexcore-bench-"))
    settings = Settings(
        paths=PathSettings(data_dir=data_dir, state_dir=state_dir),
        bot=BotSettings(_env_file=None, cooldown_s=0, streaming=True, stream_edit_interval_s=1.0),
    )
    clock = FakeClock()
    engine = LoadEngine(
        load_fake_data(data_dir),
        clock=clock,
        queue_capacity=args.capacity,
        rng=random.Random(args.seed),
        min_delay_s=args.min_delay,
        max_delay_s=args.max_delay,
    )
    store = await FeedbackStore.open(state_dir / "feedback.sqlite3")
    bot = HexcoreBot(engine, settings, store=store, clock=clock)
    h = await DiscordHarness.start(bot, clock=clock, members=args.interactions + 1)
    lag: list[float] = []
    stop = asyncio.Event()
    lag_task = asyncio.create_task(loop_lag(lag, stop))
    try:
        measured = await ask_all(h, args)
        vote_errors, measured.vote_wall = await vote_all(h, measured.answered)
        measured.escaped += vote_errors
        measured.stats = await store.stats()
    finally:
        stop.set()
        await lag_task
        await h.close()
        batches = store.batches
        await store.close()
        shutil.rmtree(state_dir, ignore_errors=True)
    measured.lag, measured.batches, measured.errors = lag, batches, h.errors.messages()
    return report(args, measured, engine)


def report(args: argparse.Namespace, m: Measured, engine: LoadEngine) -> int:
    """Print the run's figures and checks; 0 when every check passed, else 1."""
    n, kinds, acks, finals, lag, stats = args.interactions, m.kinds, m.acks, m.finals, m.lag, m.stats
    late = [a for a in acks if a > limits.ACK_DEADLINE_S]
    checks = {
        "every interaction acknowledged": len(acks) == n,
        "acknowledged within 3 s": not late,
        "answered or told busy": kinds.count("other") == 0 and len(m.recs) == n,
        "no exception escaped": not m.escaped and not m.errors,
        "every answer stored": stats["answers"] == len(m.answered),
        "no feedback row lost": stats["votes"] == len(m.answered),
    }
    arrival = "at once" if not args.spread else f"over {args.spread} s"
    print(
        f"interactions            {n} {arrival} (queue capacity {args.capacity}, delay {args.min_delay}-{args.max_delay} s)"
    )
    print(
        f"answered / busy / other {kinds.count('answered')} / {kinds.count('busy')} / {kinds.count('other')}"
    )
    busy = [r for r, k in zip(m.recs, kinds, strict=True) if k == "busy"]
    print(f"  busy before defer     {sum(1 for r in busy if not r.deferred)}")
    print(f"  busy after defer      {sum(1 for r in busy if r.deferred)} (engine refused {engine.refused})")
    print(f"engine peak in flight   {engine.peak}")
    print(
        f"ack latency  p50/p95/max {pct(acks, 50) * 1000:.0f} / {pct(acks, 95) * 1000:.0f} / {max(acks, default=0) * 1000:.0f} ms"
    )
    print(
        f"answer time  p50/p95/max {pct(finals, 50):.2f} / {pct(finals, 95):.2f} / {max(finals, default=0):.2f} s"
    )
    print(f"answer phase wall       {m.answer_wall:.2f} s")
    print(f"event-loop lag p95/max  {pct(lag, 95) * 1000:.1f} / {max(lag, default=0) * 1000:.1f} ms")
    print(
        f"votes                   {len(m.answered)} sent in {m.vote_wall:.2f} s; rows: answers {stats['answers']}, votes {stats['votes']}"
    )
    print(f"store commits           {m.batches} transactions")
    print(f"errors logged           {len(m.errors)}; exceptions escaped {len(m.escaped)}")
    for name, ok in checks.items():
        print(f"[{'ok' if ok else 'FAIL'}] {name}")
    if m.escaped:
        print("first exception:", repr(m.escaped[0]))
    if m.errors:
        print("first error:", m.errors[0])
    print(f"mean ack {statistics.fmean(acks) * 1000:.0f} ms" if acks else "no acks")
    return 0 if all(checks.values()) else 1


async def click(h: DiscordHarness, message, voter: int) -> InteractionRecord:
    rec = await h.click(message, views.HELPFUL_ID, user=voter, wait=False)
    return await rec.wait(60)


def rec_user_index(h: DiscordHarness, rec: InteractionRecord) -> int:
    return next(i for i, m in enumerate(h.members) if m.id == rec.user_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=200)
    parser.add_argument("--capacity", type=int, default=32, help="engine queue capacity")
    parser.add_argument("--min-delay", type=float, default=0.0, help="engine delay per request, seconds")
    parser.add_argument("--max-delay", type=float, default=0.5)
    parser.add_argument(
        "--spread",
        type=float,
        default=0.0,
        help="arrivals spread uniformly over this many seconds (0 = one burst)",
    )
    parser.add_argument("--seed", type=int, default=0)
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
