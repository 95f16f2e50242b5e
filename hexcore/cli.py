"""The ``hexcore`` command. Each package adds its commands through ``register(main, eval_group)``.

Heavy imports (torch, FAISS, discord) happen inside the commands, so ``hexcore --help`` is instant.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

COMMAND_MODULES = ("knowledge.cli", "engine.cli", "bot.cli", "training.cli", "evaluation.cli")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Hexcore: a Magic: The Gathering rules assistant grounded in the Comprehensive Rules."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
    try:
        main(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run()
