"""The ``hexcore`` command. Each package adds its commands through ``register(main, eval_group)``.

Failures follow one rule (hexcore.errors): one line on stderr, exit code 2 for bad input or settings, 1 for
a failed run; no traceback unless ``-vv``.

Heavy imports (torch, FAISS, discord) happen inside the commands, so ``hexcore --help`` is instant.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import threading
import warnings

import click

from hexcore.errors import HexcoreGroup

COMMAND_MODULES = (
    "knowledge.cli",
    "engine.cli",
    "bot.cli",
    "training.cli",
    "training.admin_cli",
    "evaluation.cli",
)


LIBRARY_NOISE = (
    # peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model (peft 0.18).
    r"`is_gradient_checkpointing` is deprecated",
)


@click.group(cls=HexcoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Hexcore: a Magic: The Gathering rules assistant grounded in the Comprehensive Rules."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:  # libraries' notes to their own developers, printed above every answer otherwise
        for message in LIBRARY_NOISE:
            warnings.filterwarnings("ignore", message=message)


@main.group(name="eval")
def eval_group() -> None:
    """Measure retrieval and answer quality."""


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):  # no commands there yet
                continue
            raise
        module.register(main, eval_group)


_register_commands()


def run() -> None:
    """The console script. Exits without tearing the interpreter down when that is safe (see _exit)."""
    try:
        main(standalone_mode=True)
        code: object = 0
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:  # click's standalone mode always ends here
        code = exc.code
    _exit(code)


def _exit(code: object) -> None:
    """Exit with ``code`` now. Tearing down torch, transformers and peft costs ~1.2 s after every command
    (a tenth of a warm ``hexcore ask``) and does no work the command needs: so run the atexit handlers
    (logging, temp dirs), flush, and ``os._exit``. With a non-daemon thread still running, exit normally,
    which waits for it."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:  # pragma: no cover - every CPython has it
        sys.exit(code)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed pipe (| head): nothing left to say
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
