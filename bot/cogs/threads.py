"""Follow-up threads: opened from an answer's button, each one continuing that answer's engine session.

A thread started from a message has the message's id, and an answer's session id is its message id, so
``session_id == thread id`` and a follow-up reuses the KV cache of the answer it follows. Archiving or
deleting the thread ends the session in the engine; otherwise the engine's TTLs end it (the KV cache
after 30 minutes idle, the conversation after 7 days: ``engine.conversations``).

Which threads the bot opened is kept in memory (bounded). After a restart, a thread the bot owns is still
recognised (its owner is the bot) and continues with ``session_id = thread id``, with its history: the bot's
engine keeps conversations in ``<state_dir>/conversations.sqlite3``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, cast

import discord
from discord.ext import commands

from bot import formatting, limits
from bot.cogs.lookups import CARD_REFERENCE
from bot.errors import send_ephemeral
from bot.streaming import ChannelSink
from engine.errors import EngineError

if TYPE_CHECKING:
    from bot.client import HexcoreBot
    from bot.cogs.answers import AnswerRecord, Answers

log = logging.getLogger(__name__)

THREADS_KEPT = 10_000
THREAD_ALREADY_CREATED = 160004
INTRO = "Ask your follow-up questions here: I keep the context of the answer above."
NO_MENTIONS = discord.AllowedMentions.none()


class Threads(commands.Cog):
    def __init__(self, bot: HexcoreBot) -> None:
        self.bot = bot
        self.sessions: OrderedDict[int, str] = OrderedDict()
        """Thread id -> engine session id, for threads the bot opened."""

    # --------------------------------------------------------------------------------- registry

    def register(self, thread_id: int, session_id: str) -> None:
        self.sessions[thread_id] = session_id
        self.sessions.move_to_end(thread_id)
        while len(self.sessions) > THREADS_KEPT:
            self.sessions.popitem(last=False)

    def session_for(self, thread: discord.Thread) -> str | None:
        """The session a thread continues, or None when the bot did not open it."""
        session = self.sessions.get(thread.id)
        if session is None and self.bot.user is not None and thread.owner_id == self.bot.user.id:
            session = str(thread.id)  # ours, opened before a restart
            self.register(thread.id, session)
        return session

    async def end(self, thread_id: int, *, forget: bool) -> None:
        session = self.sessions.pop(thread_id, None) if forget else self.sessions.get(thread_id)
        if session is None:
            return
        try:
            await self.bot.engine.end_session(session)
        except EngineError as exc:  # the engine's TTL ends it anyway
            log.warning("could not end session %s: %s", session, exc)

    def _answers(self) -> Answers | None:
        return cast("Answers | None", self.bot.get_cog("Answers"))

    # ------------------------------------------------------------------------------- opening

    async def open_from_answer(self, interaction: discord.Interaction, record: AnswerRecord | None) -> None:
        message = interaction.message
        if message is None or not isinstance(interaction.channel, discord.TextChannel):
            await send_ephemeral(
                interaction, "Threads can be opened from answers in a server text channel only."
            )
            return
        if message.id in self.sessions:
            await send_ephemeral(interaction, f"This answer already has a thread: <#{message.id}>")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        title = record.question if record else (message.embeds[0].title if message.embeds else None)
        name = formatting.truncate(" ".join((title or "Follow-up").split()), limits.THREAD_NAME_LIMIT)
        try:
            thread = await message.create_thread(name=name, auto_archive_duration=1440)
        except discord.HTTPException as exc:
            if exc.code == THREAD_ALREADY_CREATED:
                await send_ephemeral(interaction, f"This answer already has a thread: <#{message.id}>")
            else:
                log.warning("could not open a thread on %s: %s", message.id, exc)
                await send_ephemeral(interaction, "I couldn't open a thread here (missing permission?).")
            return
        session = record.session_id if record and record.session_id else str(thread.id)
        self.register(thread.id, session)
        await thread.send(INTRO, allowed_mentions=NO_MENTIONS)
        await send_ephemeral(interaction, f"Thread opened: {thread.mention}")

    # ---------------------------------------------------------------------------- follow-ups

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or not isinstance(message.channel, discord.Thread):
            return
        session = self.session_for(message.channel)
        if session is None:
            return
        question = message.content.strip()
        if not CARD_REFERENCE.sub("", question).strip():  # only [[card]] lookups: the lookups cog answers
            return
        answers = self._answers()
        if answers is None:
            return
        with answers.admission(message.author.id) as refusal:
            if refusal is not None:
                await message.reply(refusal, mention_author=False, allowed_mentions=NO_MENTIONS)
                return
            await answers.respond(
                request=answers.request(question, None, session, message.author.id),
                sink=ChannelSink(message.channel, reply_to=message),
                user_id=message.author.id,
                guild_id=message.guild.id if message.guild else None,
                channel_id=message.channel.id,
                command="thread",
                title=question,
                thread_button=False,
            )

    # ----------------------------------------------------------------------------- lifecycle

    @commands.Cog.listener()
    async def on_raw_thread_update(self, payload: discord.RawThreadUpdateEvent) -> None:
        metadata = payload.data.get("thread_metadata") or {}
        if metadata.get("archived"):
            await self.end(payload.thread_id, forget=False)

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        await self.end(payload.thread_id, forget=True)


async def setup(bot: HexcoreBot) -> None:
    await bot.add_cog(Threads(bot))
