"""Wall time of ``hexcore ask`` as a user runs it: a fresh process, cold (clean state dir) and warm.

Cold: a new, empty state dir, so the run builds the search index, converts the embedded model, creates the
initial adapters and trains the router before answering. Warm: the same command again on that state dir
(everything built), ``--warm-runs`` times; the median is reported (target < 10 s on the 2-core CPU).
``--skip-cold --state-dir DIR`` measures warm runs on an existing state dir only.

    python bench/bench_ask.py
    python bench/bench_ask.py --skip-cold --state-dir var --warm-runs 5

The answer's own stage timings (``--json`` output of the command) are reported beside the wall time, so
process start-up and engine loading can be told apart from answering.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "How does trample work when the blocker dies?"


def run_ask(state_dir: Path, question: str, extra_env: dict[str, str]) -> dict:
    env = {**os.environ, "HEXCORE_STATE_DIR": str(state_dir), "HF_HUB_OFFLINE": "1", **extra_env}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "hexcore", "ask", "--json", "-q", question],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"hexcore ask failed ({proc.returncode}): {proc.stderr.strip()}")
    answer = json.loads(proc.stdout)
    return {
        "wall_s": round(wall, 2),
        "answer_ms": answer["timings_ms"],
        "citations": [c["id"] for c in answer["citations"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="State dir (default: a new temporary one)."
    )
    args = parser.parse_args()

    extra: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="hexcore-bench-ask-") as tmp:
        state = (args.state_dir or Path(tmp) / "state").resolve()
        results: dict = {"question": args.question, "state_dir": str(state)}
        if not args.skip_cold:
            cold = run_ask(state, args.question, extra)
            results["cold"] = cold
            print(f"cold: {cold['wall_s']} s  (answer stages {cold['answer_ms']})", flush=True)
        warm = []
        for i in range(args.warm_runs):
            run = run_ask(state, args.question, extra)
            warm.append(run)
            print(f"warm {i + 1}: {run['wall_s']} s  (answer stages {run['answer_ms']})", flush=True)
        if warm:
            results["warm"] = warm
            results["warm_median_s"] = statistics.median(r["wall_s"] for r in warm)
            print(f"warm median: {results['warm_median_s']} s; cited {warm[-1]['citations']}")
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
