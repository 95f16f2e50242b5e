"""``hexcore bot``: run the Discord bot on the local engine.

Heavy imports (discord, the engine) happen inside the command so ``hexcore --help`` stays instant. A
missing token is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import sys
from typing import Any

import click

log = logging.getLogger(__name__)

TOKEN_HELP = "set DISCORD_TOKEN in the environment or in bot.env (DISCORD_TOKEN=...)"


def read_token() -> str:
    """The bot token from ``DISCORD_TOKEN`` (environment or bot.env); exits 2 with one line when missing."""
    from pydantic import ValidationError

    from hexcore.settings import DiscordSecrets

    try:
        token = DiscordSecrets().discord_token.get_secret_value().strip()
    except ValidationError:
        token = ""
    if not token:
        fail(f"error: no Discord bot token: {TOKEN_HELP}")
    return token


TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{17,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}")
"""A bot token: base64url user id, timestamp and signature joined by dots (checked before the engine loads)."""


def check_token_shape(token: str) -> None:
    """Exit 2 with one line when ``token`` cannot be a bot token: found before minutes of loading the model,
    and never sent in an HTTP header (a newline or non-ASCII character there raised inside aiohttp)."""
    if not TOKEN_SHAPE.fullmatch(token):
        fail(
            "error: DISCORD_TOKEN does not look like a bot token (three parts joined by dots, as the Bot page "
            f"of the Discord developer portal shows it); {TOKEN_HELP}"
        )


def fail(line: str, code: int = 2) -> None:
    click.echo(line, err=True)
    sys.exit(code)


async def _optional_service(module: str, factory: str, *args: Any) -> Any:
    """``module.factory(*args)`` (awaited when async) if that module exists yet, else None."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise
    make = getattr(mod, factory, None)
    if make is None:
        return None
    result = make(*args)
    return await result if asyncio.iscoroutine(result) else result


async def run_bot(token: str) -> None:
    import discord

    from bot.client import HexcoreBot
    from engine.conversations import ConversationStore
    from engine.local import LocalEngine  # the real engine; imported here: it loads torch
    from hexcore.settings import get_settings

    settings = get_settings()
    # Thread conversations outlive the process (a deploy, a crash); their KV caches are rebuilt on demand.
    conversations = ConversationStore(
        settings.engine.max_conversations, settings.engine.conversation_ttl_s, settings.paths.conversations_db
    )
    engine = LocalEngine(settings, conversations=conversations)
    await engine.start()
    store = await _optional_service("bot.storage", "open_store", settings)
    scheduler = None
    if settings.bot.is_primary:  # retraining and warm-up run once per deployment, not once per process
        scheduler = await _optional_service("bot.scheduler", "build_scheduler", settings, engine, store)
    bot = HexcoreBot(engine, settings, store=store, scheduler=scheduler)
    try:
        async with bot:
            await bot.start(token)
    except discord.LoginFailure:
        fail(f"error: Discord rejected the bot token: {TOKEN_HELP}")
    except discord.PrivilegedIntentsRequired:
        fail("error: enable the Message Content intent for this bot in the Discord developer portal")
    except (OSError, discord.GatewayNotFound, discord.HTTPException) as exc:  # network down, Discord down
        fail(f"error: cannot reach Discord ({type(exc).__name__}: {exc}); check the network and try again", 1)
    finally:
        if scheduler is not None and hasattr(scheduler, "close"):  # before the store: a run records its end
            await scheduler.close()
        if store is not None and hasattr(store, "close"):
            await store.close()
        await engine.close()
        conversations.close()  # after the engine: its worker writes the last turns


def register(main: click.Group, eval_group: click.Group) -> None:
    @main.command(name="bot")
    def bot_command() -> None:
        """Run the Discord bot (needs DISCORD_TOKEN)."""
        token = read_token()
        check_token_shape(token)
        from engine.errors import EngineError
        from knowledge.errors import DataMissing

        try:
            asyncio.run(run_bot(token))
        except DataMissing as exc:
            fail(f"error: {exc}")
        except EngineError as exc:  # the model or the index could not load: the run failed (1)
            fail(f"error: {exc}", 1)
        except KeyboardInterrupt:
            pass
