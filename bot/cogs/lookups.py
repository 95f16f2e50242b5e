"""Dictionary lookups: ``/rule``, ``/card`` and ``[[card name]]`` anywhere in a message.

Lookups read the engine's in-memory tables (no model, no queue), so they answer at once without
deferring. Unknown input gets the nearest rule numbers or did-you-mean card names.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import formatting, limits
from bot.errors import send_ephemeral
from knowledge.errors import UnknownCard, UnknownRule

if TYPE_CHECKING:
    from bot.client import HexcoreBot

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
CARD_REFERENCE = re.compile(r"\[\[([^\[\]\n]{1,141})\]\]")
"""``[[Card Name]]``: the longest printed card name is 141 characters."""


def _choices(names: list[str]) -> list[app_commands.Choice[str]]:
    return [
        app_commands.Choice(
            name=formatting.truncate(n, limits.CHOICE_NAME_LIMIT), value=n[: limits.CHOICE_NAME_LIMIT]
        )
        for n in names[: limits.CHOICES_LIMIT]
    ]


async def card_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Card names starting with (or close to) what the user typed, from the engine's memory."""
    try:
        return _choices(interaction.client.engine.autocomplete_cards(current, limits.CHOICES_LIMIT))  # type: ignore[attr-defined]
    except Exception:  # an autocomplete error must never surface; an empty list is a fine answer
        log.exception("card autocomplete failed for %r", current)
        return []


async def rule_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    try:
        return _choices(interaction.client.engine.autocomplete_rules(current, limits.CHOICES_LIMIT))  # type: ignore[attr-defined]
    except Exception:
        log.exception("rule autocomplete failed for %r", current)
        return []


def card_references(content: str) -> list[str]:
    """Distinct ``[[...]]`` names in order of appearance."""
    seen: dict[str, str] = {}
    for raw in CARD_REFERENCE.findall(content):
        name = " ".join(raw.split())
        if name:
            seen.setdefault(name.lower(), name)
    return list(seen.values())


class Lookups(commands.Cog):
    def __init__(self, bot: HexcoreBot) -> None:
        self.bot = bot

    @app_commands.command(name="rule", description="Show a Comprehensive Rules entry with its sub-rules.")
    @app_commands.describe(number="Rule number, for example 702.19b")
    @app_commands.autocomplete(number=rule_autocomplete)
    async def rule(self, interaction: discord.Interaction, number: app_commands.Range[str, 1, 32]) -> None:
        try:
            rule, children, release = self.bot.engine.rule(number)
        except UnknownRule as exc:
            await send_ephemeral(interaction, formatting.unknown_rule_message(exc))
            return
        pages = formatting.rule_pages(rule, children, release)
        await interaction.response.send_message(embeds=pages[0].embeds, allowed_mentions=NO_MENTIONS)
        for page in pages[1:]:
            await interaction.followup.send(embeds=page.embeds, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="card", description="Show a card's oracle text, every face.")
    @app_commands.describe(name="Card name")
    @app_commands.autocomplete(name=card_autocomplete)
    async def card(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 150]) -> None:
        try:
            card = self.bot.engine.card(name)
        except UnknownCard as exc:
            await send_ephemeral(interaction, formatting.unknown_card_message(exc))
            return
        await interaction.response.send_message(
            embed=formatting.card_embed(card), allowed_mentions=NO_MENTIONS
        )

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or "[[" not in message.content:
            return
        names = card_references(message.content)
        if not names:
            return
        embeds: list[discord.Embed] = []
        notes: list[str] = []
        for name in names[: limits.MAX_CARDS_PER_MESSAGE]:
            try:
                embeds.append(formatting.card_embed(self.bot.engine.card(name)))
            except UnknownCard as exc:
                notes.append(formatting.unknown_card_message(exc))
        if len(names) > limits.MAX_CARDS_PER_MESSAGE:
            notes.append(f"(Showing the first {limits.MAX_CARDS_PER_MESSAGE} cards of {len(names)}.)")
        pages = formatting.pack(embeds) or [formatting.Page()]
        pages[0].content = formatting.truncate("\n".join(notes), limits.CONTENT_LIMIT) or None
        for i, page in enumerate(pages):
            try:
                if i == 0:
                    await message.reply(
                        content=page.content,
                        embeds=page.embeds,
                        mention_author=False,
                        allowed_mentions=NO_MENTIONS,
                    )
                else:
                    await message.channel.send(embeds=page.embeds, allowed_mentions=NO_MENTIONS)
            except discord.Forbidden:
                log.info("no permission to answer card lookups in channel %s", message.channel.id)
                return


async def setup(bot: HexcoreBot) -> None:
    await bot.add_cog(Lookups(bot))
