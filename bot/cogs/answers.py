"""The answer commands: ``/ask`` (routed) and ``/explain``, ``/teach``, ``/predict``, ``/review`` (fixed experts).

Each command checks its card option, then hands the question to the bot's answer service
(``bot.answering``): admission with an immediate private reply when refused, ``defer()`` at once, the
streamed answer with its sources verbatim and the answer buttons. The buttons' actions land here too:
votes go to the feedback store, "Open thread" to the service.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import limits
from bot.cogs.lookups import card_autocomplete
from bot.errors import send_ephemeral
from bot.formatting import unknown_card_message
from bot.views import AnswerView
from engine.api import Expert
from knowledge.errors import UnknownCard

if TYPE_CHECKING:
    from bot.client import HexcoreBot

log = logging.getLogger(__name__)

Question = app_commands.Range[str, 1, limits.MAX_QUESTION_CHARS]


class Answers(commands.Cog):
    def __init__(self, bot: HexcoreBot) -> None:
        self.bot = bot

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
        await self.bot.answers.answer_interaction(
            interaction, prompt, title=question, experts=experts, command=command
        )

    # ------------------------------------------------------------------------------ button actions

    async def open_thread(self, interaction: discord.Interaction) -> None:
        await self.bot.answers.open_thread(interaction)

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
