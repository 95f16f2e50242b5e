"""The answer commands: ``/ask`` (routed) and ``/explain``, ``/teach``, ``/predict``, ``/review`` (fixed experts).

Each command: admission (engine alive and not full, the user's lock and cooldown) with an immediate
private reply when refused; then ``defer()`` at once, so a slow engine never loses the interaction; then
the streamed answer (``bot.streaming``) with its sources verbatim and the answer buttons. The same path
answers follow-ups in threads (``bot.cogs.threads``).
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot import limits
from bot.cogs.lookups import card_autocomplete
from bot.errors import send_ephemeral
from bot.formatting import unknown_card_message
from bot.streaming import AnswerSink, InteractionSink, Outcome, StreamPolicy, run_answer
from bot.views import AnswerView
from engine.api import AnswerRequest, Expert
from engine.errors import EngineDead, EngineOverloaded
from knowledge.errors import UnknownCard

if TYPE_CHECKING:
    from bot.client import HexcoreBot
    from bot.cogs.threads import Threads

log = logging.getLogger(__name__)

RECORDS_KEPT = 4096
"""Recent answers remembered in memory (message id -> session, question) for opening threads."""

Question = app_commands.Range[str, 1, limits.MAX_QUESTION_CHARS]


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    answer_id: str
    session_id: str | None
    question: str
    user_id: int


class Answers(commands.Cog):
    def __init__(self, bot: HexcoreBot) -> None:
        self.bot = bot
        self.records: OrderedDict[int, AnswerRecord] = OrderedDict()

    async def cog_load(self) -> None:
        self.bot.view_factories.append(lambda: AnswerView(self))

    # ------------------------------------------------------------------------------------- commands

    @app_commands.command(
        name="ask", description="Ask a rules question; the right experts are chosen for you."
    )
    @app_commands.describe(
        question="Your question about the rules or a game situation", card="A card it is about"
    )
    @app_commands.autocomplete(card=card_autocomplete)
    async def ask(
        self, interaction: discord.Interaction, question: Question, card: str | None = None
    ) -> None:
        await self.answer_command(interaction, question, card, None, "ask")

    @app_commands.command(name="explain", description="Explain a rule, keyword or concept, citing the rules.")
    @app_commands.describe(question="The rule, keyword or concept to explain", card="A card it is about")
    @app_commands.autocomplete(card=card_autocomplete)
    async def explain(
        self, interaction: discord.Interaction, question: Question, card: str | None = None
    ) -> None:
        await self.answer_command(interaction, question, card, (Expert.EXPLAIN,), "explain")

    @app_commands.command(name="teach", description="Learn a rule simply, with an example.")
    @app_commands.describe(question="What you want to learn", card="A card it is about")
    @app_commands.autocomplete(card=card_autocomplete)
    async def teach(
        self, interaction: discord.Interaction, question: Question, card: str | None = None
    ) -> None:
        await self.answer_command(interaction, question, card, (Expert.TEACH,), "teach")

    @app_commands.command(
        name="predict", description="What happens next in a game situation, or which line is better."
    )
    @app_commands.describe(question="The situation and what you want to know", card="A card it is about")
    @app_commands.autocomplete(card=card_autocomplete)
    async def predict(
        self, interaction: discord.Interaction, question: Question, card: str | None = None
    ) -> None:
        await self.answer_command(interaction, question, card, (Expert.PREDICT,), "predict")

    @app_commands.command(
        name="review", description="Review a past play: what was right, what went wrong, which rule."
    )
    @app_commands.describe(question="The play to review", card="A card it is about")
    @app_commands.autocomplete(card=card_autocomplete)
    async def review(
        self, interaction: discord.Interaction, question: Question, card: str | None = None
    ) -> None:
        await self.answer_command(interaction, question, card, (Expert.RETROSPECT,), "review")

    # -------------------------------------------------------------------------------- answer path

    @contextlib.contextmanager
    def admission(self, user_id: int) -> Iterator[str | None]:
        """Yield None when the question may start (the user's slot is held until exit), else why not."""
        status = self.bot.engine.status()
        if not status.alive:
            yield EngineDead.user_message
            return
        if status.queue_depth >= status.queue_capacity:
            yield EngineOverloaded(status.queue_depth).user_message
            return
        rejection = self.bot.gate.try_acquire(user_id)
        if rejection is not None:
            yield rejection.message
            return
        try:
            yield None
        finally:
            self.bot.gate.release(user_id)

    def policy(self) -> StreamPolicy:
        cfg = self.bot.settings.bot
        return StreamPolicy(
            streaming=cfg.streaming,
            edit_interval_s=cfg.stream_edit_interval_s,
            timeout_s=cfg.answer_timeout_s,
            clock=self.bot.clock,
        )

    def request(
        self, question: str, experts: tuple[Expert, ...] | None, session_id: str | None, user_id: int
    ) -> AnswerRequest:
        max_tokens = min(self.bot.settings.engine.max_new_tokens, limits.MAX_ANSWER_TOKENS)
        return AnswerRequest(question, experts, session_id, max_tokens, str(user_id))

    async def answer_command(
        self,
        interaction: discord.Interaction,
        question: str,
        card: str | None,
        experts: tuple[Expert, ...] | None,
        command: str,
    ) -> None:
        prompt = question
        if card:
            try:
                prompt = f"{question}\n\nCard: {self.bot.engine.card(card).name}"
            except UnknownCard as exc:
                await send_ephemeral(interaction, unknown_card_message(exc))
                return
        with self.admission(interaction.user.id) as refusal:
            if refusal is not None:
                await send_ephemeral(interaction, refusal)
                return
            await interaction.response.defer(thinking=True)
            session_id = await self._session_for(interaction)
            in_thread = isinstance(interaction.channel, discord.Thread)
            await self.respond(
                request=self.request(prompt, experts, session_id, interaction.user.id),
                sink=InteractionSink(interaction, self.bot.clock),
                user_id=interaction.user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                command=command,
                title=question,
                thread_button=not in_thread,
            )

    async def respond(
        self,
        *,
        request: AnswerRequest,
        sink: AnswerSink,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        command: str,
        title: str,
        thread_button: bool,
    ) -> Outcome:
        """Generate into ``sink``, then remember and store the answer (shared with thread follow-ups)."""
        view = AnswerView.rendered(thread_button=thread_button)
        outcome = await run_answer(self.bot.engine, request, sink, self.policy(), view=view, title=title)
        if outcome.answer is None or outcome.message is None:
            return outcome
        record = AnswerRecord(str(outcome.message.id), request.session_id, title, user_id)
        self.records[outcome.message.id] = record
        while len(self.records) > RECORDS_KEPT:
            self.records.popitem(last=False)
        if self.bot.store is not None:
            # In the background: a slow database must not hold the user's slot or the reply.
            answer = outcome.answer
            write = self.bot.store.answers.record(
                record.answer_id,
                guild_id,
                channel_id,
                user_id,
                command,
                title,
                answer.text,
                [e.value for e in answer.experts],
                [c.label() for c in answer.citations],
                latency_ms=answer.timings_ms.get("total"),
            )
            self.bot.background.spawn(write, name=f"store-answer-{record.answer_id}")
        return outcome

    async def _session_for(self, interaction: discord.Interaction) -> str | None:
        """The engine session: the thread's in a follow-up thread, else the answer message's id.

        The answer message id is also the id of a thread later opened from it, so a follow-up thread
        continues the very session that produced the answer.
        """
        threads = self._threads()
        if threads is not None and isinstance(interaction.channel, discord.Thread):
            session = threads.session_for(interaction.channel)
            if session is not None:
                return session
        try:
            return str((await interaction.original_response()).id)
        except discord.HTTPException:
            return f"interaction-{interaction.id}"

    def _threads(self) -> Threads | None:
        return cast("Threads | None", self.bot.get_cog("Threads"))

    # ------------------------------------------------------------------------------ button actions

    async def open_thread(self, interaction: discord.Interaction) -> None:
        threads = self._threads()
        if threads is None:
            await send_ephemeral(interaction, "Follow-up threads are not available right now.")
            return
        record = self.records.get(interaction.message.id) if interaction.message else None
        await threads.open_from_answer(interaction, record)

    async def vote(self, interaction: discord.Interaction, value: int) -> None:
        if interaction.message is None:
            return
        if self.bot.store is not None:
            try:
                await self.bot.store.votes.record(
                    str(interaction.message.id), interaction.user.id, value, "button"
                )
            except Exception:
                log.exception("could not record a vote on %s", interaction.message.id)
                await send_ephemeral(interaction, "I couldn't record your vote. Please try again later.")
                return
        await send_ephemeral(
            interaction, "Thanks for the feedback!" if value > 0 else "Thanks, noted. It helps me improve."
        )


async def setup(bot: HexcoreBot) -> None:
    await bot.add_cog(Answers(bot))
