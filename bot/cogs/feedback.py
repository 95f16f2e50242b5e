"""Feedback on answers: reactions become votes, and ``/forgetme`` deletes a user's stored data.

Votes from reactions and from the answer buttons (``bot.views``, handled by the answers cog) land in the
same store row, one per user per answer: the latest one counts. Removing a reaction removes the vote only
if that reaction is still what cast it (a later button click is not undone). Reactions by bots, custom
emoji, unmapped emoji and reactions on anything but a stored answer are ignored.

``/forgetme`` asks for confirmation privately; its buttons are ``DynamicItem``s whose custom id carries
the user and the time asked, so they work after a restart and only for that user, for a limited time.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import TYPE_CHECKING, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import send_ephemeral
from bot.storage import UnknownAnswer

if TYPE_CHECKING:
    from bot.client import HexcoreBot

log = logging.getLogger(__name__)

REACTION_VALUES: dict[str, int] = {"👍": 1, "👎": -1, "✅": 1, "❌": -1, "❤": 1, "⭐": 1}
"""Emoji (without skin tone or variation selector) -> vote value."""
SKIN_TONES_AND_VARIANTS = re.compile("[\U0001f3fb-\U0001f3ff\ufe0f]")
CONFIRM_WINDOW = dt.timedelta(minutes=10)
NO_STORE = "No feedback is stored by this bot, so there is nothing to delete."


def reaction_value(emoji: discord.PartialEmoji | str) -> tuple[str, int] | None:
    """(normalised emoji, vote value) for a feedback reaction, else None (custom and other emoji)."""
    if isinstance(emoji, discord.PartialEmoji):
        if emoji.id is not None or not emoji.name:
            return None
        emoji = emoji.name
    name = SKIN_TONES_AND_VARIANTS.sub("", emoji)
    value = REACTION_VALUES.get(name)
    return None if value is None else (name, value)


def reaction_source(name: str) -> str:
    return f"reaction:{name}"


def _clock_now(bot: discord.Client) -> dt.datetime:
    clock = getattr(bot, "clock", None)
    return clock.now() if clock is not None else discord.utils.utcnow()


class ForgetButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"hexcore:forgetme:(?P<action>confirm|cancel):(?P<user_id>\d+):(?P<asked>\d+)",
):
    """Confirm or cancel a ``/forgetme`` request of ``user_id`` made at unix time ``asked``."""

    def __init__(self, action: str, user_id: int, asked: int) -> None:
        confirm = action == "confirm"
        super().__init__(
            discord.ui.Button(
                label="Delete my data" if confirm else "Cancel",
                style=discord.ButtonStyle.danger if confirm else discord.ButtonStyle.secondary,
                custom_id=f"hexcore:forgetme:{action}:{user_id}:{asked}",
            )
        )
        self.action = action
        self.user_id = user_id
        self.asked = asked

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> ForgetButton:
        return cls(match["action"], int(match["user_id"]), int(match["asked"]))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.user_id:
            await send_ephemeral(interaction, "Only the person who asked can confirm this.")
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        if self.action == "cancel":
            await interaction.response.edit_message(content="Cancelled: nothing was deleted.", view=None)
            return
        asked = dt.datetime.fromtimestamp(self.asked, dt.UTC)
        if _clock_now(interaction.client) - asked > CONFIRM_WINDOW:
            await interaction.response.edit_message(
                content="This confirmation expired. Run /forgetme again.", view=None
            )
            return
        await forget(cast("HexcoreBot", interaction.client), interaction, self.user_id)


async def forget(bot: HexcoreBot, interaction: discord.Interaction, user_id: int) -> None:
    """The confirmed ``/forgetme``: delete the stored data, then the in-memory copies."""
    store = bot.store
    if store is None:
        await interaction.response.edit_message(content=NO_STORE, view=None)
        return
    try:
        counts = await store.users.delete(user_id)
    except Exception:
        log.exception("could not delete the data of user %s", user_id)
        await interaction.response.edit_message(
            content="Deleting your data failed; nothing was deleted. Please try again later.", view=None
        )
        return
    bot.answers.forget_user(user_id)  # the in-memory copies of their questions
    log.info("deleted the stored data of user %s: %s", user_id, counts)
    await interaction.response.edit_message(
        content=(
            f"Done: deleted {counts['answers']} answer(s), {counts['votes']} vote(s) of yours, "
            f"{counts['votes_on_answers']} vote(s) on your answers and {counts['threads']} thread link(s)."
        ),
        view=None,
    )


class Feedback(commands.Cog):
    def __init__(self, bot: HexcoreBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ForgetButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ForgetButton)

    # ------------------------------------------------------------------------------- reactions

    def _feedback_reaction(self, payload: discord.RawReactionActionEvent) -> tuple[str, int] | None:
        """The reaction's (emoji, value) when it may be a vote on one of our answers, else None."""
        me = self.bot.user
        if me is None or payload.user_id == me.id:
            return None
        if payload.member is not None and payload.member.bot:
            return None
        author = getattr(payload, "message_author_id", None)
        if author is not None and author != me.id:  # someone else's message: no database round trip
            return None
        if self.bot.store is None:
            return None
        return reaction_value(payload.emoji)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        found = self._feedback_reaction(payload)
        if found is None:
            return
        if payload.member is None:  # direct messages: no member object to tell a bot by
            user = self.bot.get_user(payload.user_id)
            if user is not None and user.bot:
                return
        name, value = found
        try:
            await self.bot.store.votes.record(
                payload.message_id, payload.user_id, value, reaction_source(name)
            )
        except UnknownAnswer:
            return  # a bot message that is not a stored answer (lookups, errors, thread intros)
        except Exception:  # feedback must never break anything else
            log.exception("could not record a reaction vote on %s", payload.message_id)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        found = self._feedback_reaction(payload)
        if found is None:
            return
        try:
            await self.bot.store.votes.remove(
                payload.message_id, payload.user_id, source=reaction_source(found[0])
            )
        except Exception:
            log.exception("could not remove a reaction vote on %s", payload.message_id)

    # ------------------------------------------------------------------------------- /forgetme

    @app_commands.command(
        name="forgetme", description="Delete your votes and the questions and answers stored for you."
    )
    async def forgetme(self, interaction: discord.Interaction) -> None:
        store = self.bot.store
        if store is None:
            await send_ephemeral(interaction, NO_STORE)
            return
        counts = await store.users.count(interaction.user.id)
        if not any(counts.values()):
            await send_ephemeral(interaction, "Nothing is stored about you: no questions, no votes.")
            return
        asked = int(_clock_now(self.bot).timestamp())
        view = discord.ui.View(timeout=None)
        view.add_item(ForgetButton("confirm", interaction.user.id, asked))
        view.add_item(ForgetButton("cancel", interaction.user.id, asked))
        view.stop()  # rendered only: the registered dynamic items handle the clicks, even after a restart
        await interaction.response.send_message(
            f"This deletes the {counts['answers']} answer(s) you asked for (with any votes and threads on "
            f"them) and your {counts['votes']} vote(s). It cannot be undone. Continue?",
            view=view,
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )


async def setup(bot: HexcoreBot) -> None:
    await bot.add_cog(Feedback(bot))
