"""Persistent components under answers: open a follow-up thread, vote helpful / not helpful.

The buttons have fixed ``custom_id``s and the view has ``timeout=None``, so one instance registered in
``setup_hook`` (``HexcoreBot.view_factories``) serves every answer ever posted, across restarts. Messages
are sent with a *stopped* copy that only renders the buttons: the library then does not keep one view
object per answer in memory forever.
"""

from __future__ import annotations

from typing import Protocol

import discord

THREAD_ID = "hexcore:answer:thread"
HELPFUL_ID = "hexcore:answer:helpful"
UNHELPFUL_ID = "hexcore:answer:unhelpful"


class AnswerActions(Protocol):
    """What the buttons do; implemented by the answers cog."""

    async def open_thread(self, interaction: discord.Interaction) -> None: ...

    async def vote(self, interaction: discord.Interaction, value: int) -> None: ...


class AnswerView(discord.ui.View):
    def __init__(self, actions: AnswerActions | None = None, *, thread_button: bool = True) -> None:
        super().__init__(timeout=None)
        self.actions = actions
        if not thread_button:
            self.remove_item(self.open_thread)

    @classmethod
    def rendered(cls, *, thread_button: bool = True) -> AnswerView:
        """A copy to attach to a message: same buttons, never stored (the persistent instance handles clicks)."""
        view = cls(None, thread_button=thread_button)
        view.stop()
        return view

    @discord.ui.button(
        label="Open thread", emoji="🧵", style=discord.ButtonStyle.primary, custom_id=THREAD_ID
    )
    async def open_thread(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if self.actions is not None:
            await self.actions.open_thread(interaction)

    @discord.ui.button(label="Helpful", emoji="👍", style=discord.ButtonStyle.success, custom_id=HELPFUL_ID)
    async def helpful(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if self.actions is not None:
            await self.actions.vote(interaction, 1)

    @discord.ui.button(
        label="Not helpful", emoji="👎", style=discord.ButtonStyle.secondary, custom_id=UNHELPFUL_ID
    )
    async def unhelpful(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if self.actions is not None:
            await self.actions.vote(interaction, -1)
