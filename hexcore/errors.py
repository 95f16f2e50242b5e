"""How every ``hexcore`` command fails: one line on stderr and one exit-code rule, never a traceback.

The rule (docs/RELIABILITY.md):

* exit code 2 (``USAGE``): what the user typed or configured is wrong (an argument, an option, a setting in
  the environment or an env file, a missing token). Fix the input and run again.
* exit code 1 (``FAILURE``): the input was fine but the run failed (missing data, a damaged file that cannot
  be rebuilt, another command holding the state dir, a model that cannot load).

Commands raise their own typed errors; :class:`HexcoreGroup` (the root ``hexcore`` group) turns the ones no
command caught into that one line: invalid settings name the environment variable, not the pydantic field,
and anything unexpected says how to see the traceback (``-vv``) instead of printing it.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, NoReturn

import click

USAGE = 2
FAILURE = 1

log = logging.getLogger(__name__)

SETTINGS_FIX = "fix or unset it (in the environment, hexcore.env or bot.env)"


class HexcoreError(Exception):
    """An expected failure whose message is fit to show a user as it is; ``exit_code`` follows the rule."""

    exit_code = FAILURE


class UsageProblem(HexcoreError):
    """Bad input or configuration (exit code 2)."""

    exit_code = USAGE


def fail(message: str, code: int = FAILURE) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _settings_classes() -> dict[str, Any]:
    from pydantic_settings import BaseSettings

    from hexcore import settings

    return {
        name: value
        for name, value in vars(settings).items()
        if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings
    }


def env_name(model: str | None, field: str) -> str:
    """The environment variable of ``field`` in the settings class named ``model`` (any class when None)."""
    classes = _settings_classes()
    candidates = [classes[model]] if model in classes else list(classes.values())
    for cls in candidates:
        if field in cls.model_fields:
            return f"{cls.model_config.get('env_prefix', '')}{field}".upper()
    return field.upper()


def _shorten(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_settings_error(exc: Exception) -> str:
    """One line naming each invalid environment variable, its value and what is wrong with it."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False):
            message = re.sub(r"^(Value|Assertion) error, ", "", err["msg"])
            if not err["loc"]:  # a check across several settings: its message names them
                parts.append(message)
                continue
            name = env_name(exc.title, str(err["loc"][0]))
            if name in message:  # the validator already names the variable and the value
                parts.append(message)
            elif err.get("type") == "missing":
                parts.append(f"{name} is not set")
            else:
                parts.append(f"{name}={_shorten(err.get('input'))} is invalid: {message}")
        return f"invalid setting: {'; '.join(parts)}; {SETTINGS_FIX}"
    match = re.search(r'field "(\w+)"', str(exc))  # pydantic-settings' SettingsError (e.g. bad JSON list)
    name = env_name(None, match.group(1)) if match else "a setting"
    return f"invalid setting: {name} cannot be parsed ({exc}); {SETTINGS_FIX}"


class HexcoreGroup(click.Group):
    """The root group: errors no command handled become one line and the exit code of the rule."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # EOFError included: click would print a bare "Aborted!" for it
            known = classify(exc)
            if known is None:
                _unexpected(ctx, exc)
            fail(*known)


def classify(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for the errors whose messages are written for users, else None.

    Invalid settings (2), Hexcore's own errors (their code), and the typed errors of the engine, the
    knowledge layer and training (1; an invalid request 2)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from engine.errors import EngineError, InvalidRequest
    from knowledge.errors import KnowledgeError
    from training.errors import TrainingError

    if isinstance(exc, ValidationError | SettingsError):
        return describe_settings_error(exc), USAGE
    if isinstance(exc, HexcoreError):
        return str(exc), exc.exit_code
    if isinstance(exc, EngineError | KnowledgeError | TrainingError):
        message = str(exc) or getattr(exc, "user_message", "") or type(exc).__name__
        return message, USAGE if isinstance(exc, InvalidRequest) else FAILURE
    return None


def _unexpected(ctx: click.Context, exc: BaseException) -> NoReturn:
    """A bug or an unforeseen state: one line and exit 1; ``-vv`` shows the traceback."""
    if ctx.params.get("verbose", 0) >= 2:
        raise exc
    log.debug("unexpected failure", exc_info=exc)
    detail = str(exc).splitlines()[0][:300] if str(exc) else ""
    fail(
        f"unexpected failure: {type(exc).__name__}{': ' + detail if detail else ''}. "
        "Run again with -vv to see where, and please report it.",
        FAILURE,
    )
