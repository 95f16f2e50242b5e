"""The ``hexcore`` console script as a user runs it: a real process, output through a pipe, exit codes.

``run()`` ends the process with ``os._exit`` after the atexit handlers (skipping ~1.2 s of interpreter
teardown); these check that nothing written is lost on the way and that exit codes survive it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def hexcore(
    *args: str, data_dir: Path, tmp_path: Path, code: str | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HEXCORE_DATA_DIR": str(data_dir), "HEXCORE_STATE_DIR": str(tmp_path / "state")}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "hexcore.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_long_output_arrives_whole_through_a_pipe(data_dir: Path, tmp_path: Path) -> None:
    whole = hexcore("rule", "702", data_dir=data_dir, tmp_path=tmp_path)  # every keyword rule: ~200 KB
    assert whole.returncode == 0, whole.stderr
    assert len(whole.stdout) > 100_000
    assert whole.stdout.rstrip().endswith(".")  # the last sub-rule's text, not a cut buffer
    assert "702.19b" in whole.stdout


def test_exit_codes_and_error_lines_survive_the_fast_exit(data_dir: Path, tmp_path: Path) -> None:
    missing = hexcore("rule", "999.9", data_dir=data_dir, tmp_path=tmp_path)
    assert missing.returncode == 1 and "No rule 999.9" in missing.stderr
    usage = hexcore("rule", data_dir=data_dir, tmp_path=tmp_path)
    assert usage.returncode == 2 and "Missing argument" in usage.stderr


def test_atexit_handlers_still_run(data_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "atexit-ran"
    code = (
        "import atexit, pathlib, sys\n"
        f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('yes'))\n"
        "atexit.register(lambda: print('buffered goodbye'))\n"  # print() to a pipe buffers: flushed?
        "sys.argv = ['hexcore', '--help']\n"
        "from hexcore.cli import run\n"
        "run()\n"
    )
    done = hexcore(data_dir=data_dir, tmp_path=tmp_path, code=code)
    assert done.returncode == 0 and "Usage: hexcore" in done.stdout
    assert marker.read_text() == "yes"
    assert done.stdout.rstrip().endswith("buffered goodbye")


@pytest.mark.parametrize("daemon", [False, True])
def test_a_running_worker_thread_is_waited_for_unless_it_is_a_daemon(
    data_dir: Path, tmp_path: Path, daemon: bool
) -> None:
    marker = tmp_path / "thread-finished"
    code = (
        "import pathlib, sys, threading, time\n"
        "def work():\n"
        "    time.sleep(1.0)\n"
        f"    pathlib.Path({str(marker)!r}).write_text('done')\n"
        f"threading.Thread(target=work, daemon={daemon}).start()\n"
        "sys.argv = ['hexcore', '--help']\n"
        "from hexcore.cli import run\n"
        "run()\n"
    )
    done = hexcore(data_dir=data_dir, tmp_path=tmp_path, code=code)
    assert done.returncode == 0
    assert marker.exists() is (not daemon)  # a daemon thread is dropped, as Python itself would


@pytest.mark.parametrize("verbose", [False, True])
def test_known_library_noise_is_hidden_unless_debugging(
    data_dir: Path, tmp_path: Path, verbose: bool
) -> None:
    code = (
        "import sys, warnings\n"
        "from hexcore.cli import main, run\n"
        "@main.command(name='noisy')\n"
        "def noisy():\n"
        "    warnings.warn('`is_gradient_checkpointing` is deprecated and will be removed in v6.', FutureWarning)\n"
        "    warnings.warn('a warning we did not expect', FutureWarning)\n"
        f"sys.argv = ['hexcore', *{['-vv'] if verbose else []!r}, 'noisy']\n"
        "run()\n"
    )
    done = hexcore(data_dir=data_dir, tmp_path=tmp_path, code=code)
    assert done.returncode == 0, done.stderr
    assert "a warning we did not expect" in done.stderr  # anything else still shows
    assert ("is_gradient_checkpointing" in done.stderr) is verbose
