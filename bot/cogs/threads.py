"""Follow-up threads: messages in a thread the bot opened are answered in that answer's engine session.

The threads are opened by the answer's "Open thread" button and their sessions kept by the bot's answer
service (``bot.answering``). Archiving or deleting a thread ends its session in the engine; otherwise the
engine's TTLs end it (the KV cache after 30 minutes idle, the conversation after 7 days:
``engine.conversations``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.cogs.lookups import CARD_REFERENCE

if TYPE_CHECKING:
    from bot.client import HexcoreBot


class Threads(commands.Cog):
    def __init__(self, bot: HexcoreBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.answers.threads_enabled = True

    async def cog_unload(self) -> None:
        self.bot.answers.threads_enabled = False

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or not isinstance(message.channel, discord.Thread):
            return
        session = self.bot.answers.session_for(message.channel)
        if session is None:
            return
        if not CARD_REFERENCE.sub("", message.content).strip():  # only [[card]] lookups: the lookups cog
            return
        await self.bot.answers.answer_follow_up(message, session)

    @commands.Cog.listener()
    async def on_raw_thread_update(self, payload: discord.RawThreadUpdateEvent) -> None:
        metadata = payload.data.get("thread_metadata") or {}
        if metadata.get("archived"):
            await self.bot.answers.end_thread(payload.thread_id, forget=False)

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        await self.bot.answers.end_thread(payload.thread_id, forget=True)


async def setup(bot: HexcoreBot) -> None:
    await bot.add_cog(Threads(bot))
