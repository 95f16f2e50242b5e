"""Errors the bot raises itself, how every error becomes a short message, and the tree's error handler.

Engine and knowledge errors already carry a text fit for users; the bot shows it ephemeral and never a
traceback. Unexpected errors are logged with their traceback and answered with a generic line.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from engine.errors import EngineError
from knowledge.errors import KnowledgeError, UnknownCard, UnknownRule

log = logging.getLogger(__name__)

GENERIC_MESSAGE = "Something went wrong on my side. Please try again."

# Discord error codes meaning the message or interaction we wanted to touch no longer exists.
UNKNOWN_CHANNEL = 10003
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
INVALID_WEBHOOK_TOKEN = 50027


class BotError(Exception):
    """An error the bot raises itself; ``user_message`` is what the user sees."""

    user_message = GENERIC_MESSAGE

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.user_message)
        if message:
            self.user_message = message


class AnswerTimedOut(BotError):
    user_message = "That answer took too long and was stopped. Please try a shorter or simpler question."


def is_gone(error: BaseException) -> bool:
    """True when Discord says the target vanished: message or thread deleted, token expired.

    Such errors are expected (a user deleted the answer mid-stream) and are never retried.
    """
    if isinstance(error, discord.NotFound):
        return True
    if isinstance(error, discord.HTTPException):
        return error.code in (UNKNOWN_MESSAGE, UNKNOWN_CHANNEL, UNKNOWN_WEBHOOK, INVALID_WEBHOOK_TOKEN) or (
            error.status == 401
        )
    return False


def user_message(error: BaseException) -> str:
    """The text to show a user for ``error`` (unwrapping app-command wrappers)."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, (EngineError, BotError)):
        return error.user_message
    if isinstance(error, (UnknownRule, UnknownCard)):
        from bot import formatting  # local: formatting imports engine types; keep this module light

        if isinstance(error, UnknownRule):
            return formatting.unknown_rule_message(error)
        return formatting.unknown_card_message(error)
    if isinstance(error, KnowledgeError):
        return str(error)
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use that command here."
    return GENERIC_MESSAGE


async def send_ephemeral(interaction: discord.Interaction, text: str) -> None:
    """Reply privately whether or not the interaction was already acknowledged; a vanished target is ignored."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(
                text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
            )
        else:
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
            )
    except discord.HTTPException as exc:
        if not is_gone(exc):
            log.warning("could not send an error reply: %s", exc)


async def on_app_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """The command tree's error handler: expected errors become their message, others are logged too."""
    original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    if not isinstance(original, (EngineError, KnowledgeError, BotError, app_commands.CheckFailure)):
        command = interaction.command.qualified_name if interaction.command else "?"
        log.error("command /%s failed", command, exc_info=original)
    await send_ephemeral(interaction, user_message(original))
