"""The bot: lifecycle only (RoboDanny style). Features live in cogs; the work happens in the engine.

``HexcoreBot`` holds the engine, settings, optional feedback store and scheduler, and the one answer
service every cog calls (``bot.answering``); it loads the extensions (each failure logged, never fatal),
registers persistent views and syncs the slash commands.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.answering import AnswerService
from bot.errors import on_app_command_error
from bot.limits import Clock, SystemClock, UserGate
from bot.tasks import BackgroundTasks
from engine.api import Engine
from hexcore.settings import Settings

if TYPE_CHECKING:
    from bot.scheduler import JobScheduler
    from bot.storage import FeedbackStore

log = logging.getLogger(__name__)

EXTENSIONS: tuple[str, ...] = (
    "bot.cogs.answers",
    "bot.cogs.lookups",
    "bot.cogs.threads",
    "bot.cogs.feedback",
    "bot.cogs.admin",
)
OPTIONAL_EXTENSIONS = frozenset({"bot.cogs.feedback", "bot.cogs.admin"})
"""Loaded when present; a missing module is logged, not fatal (they ship separately)."""


def intents() -> discord.Intents:
    """Message content: ``[[card]]`` lookups and thread follow-ups read messages. Reactions: feedback."""
    value = discord.Intents.default()
    value.message_content = True
    value.reactions = True
    value.members = False
    value.presences = False
    return value


class HexcoreBot(commands.AutoShardedBot):
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        store: FeedbackStore | None = None,
        scheduler: JobScheduler | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents(),
            allowed_mentions=discord.AllowedMentions.none(),
            shard_count=settings.bot.shard_count,
            shard_ids=settings.bot.shard_ids,
            help_command=None,
        )
        self.engine = engine
        self.settings = settings
        self.store = store
        """Feedback store or None: answers and votes are then not stored."""
        self.scheduler = scheduler
        self.clock: Clock = clock or SystemClock()
        self.gate = UserGate(settings.bot.cooldown_s, self.clock)
        self.background = BackgroundTasks()
        self.answers = AnswerService(self)
        """The one answer flow (admission, streaming, answer records, thread sessions) every cog calls."""
        self.view_factories: list[Callable[[], discord.ui.View]] = []
        """Cogs append a factory in ``cog_load``; ``setup_hook`` registers each view as persistent."""
        self.extension_errors: dict[str, str] = {}
        self.synced_commands: list[app_commands.AppCommand] = []
        self.tree.on_error = on_app_command_error

    async def setup_hook(self) -> None:
        await self.load_extensions()
        for factory in self.view_factories:
            self.add_view(factory())
        if self.settings.bot.is_primary:  # one process of a sharded deployment syncs, not each of them
            await self.sync_commands()

    async def load_extensions(self) -> None:
        for name in EXTENSIONS:
            if name in OPTIONAL_EXTENSIONS and importlib.util.find_spec(name) is None:
                log.info("extension %s is not installed; skipped", name)
                continue
            try:
                await self.load_extension(name)
            except Exception as exc:  # one broken cog must not keep the others down
                self.extension_errors[name] = f"{type(exc).__name__}: {exc}"
                log.exception("failed to load extension %s", name)

    async def sync_commands(self) -> None:
        """To the development guild (instant) when one is set, else globally (propagates within minutes)."""
        guild_id = self.settings.bot.dev_guild_id
        try:
            if guild_id is not None:
                guild = discord.Object(id=guild_id)
                self.tree.copy_global_to(guild=guild)
                self.synced_commands = await self.tree.sync(guild=guild)
            else:
                self.synced_commands = await self.tree.sync()
        except discord.HTTPException:
            log.exception("command sync failed; the previously synced commands stay in place")
            return
        log.info("synced %d commands to %s", len(self.synced_commands), guild_id or "all guilds")

    async def on_ready(self) -> None:
        log.info("ready as %s in %d guilds", self.user, len(self.guilds))

    async def close(self) -> None:
        await self.background.cancel_all()
        await super().close()
