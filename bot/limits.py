"""Discord's hard limits, the bot's own caps, a clock that tests can drive, and the per-user gate.

Everything time-dependent in the bot reads :class:`Clock`, so tests advance a simulated clock instead of
sleeping (stream throttling, cooldowns, the 15-minute interaction token).
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from typing import Protocol

import discord
from discord.ext import commands

# Discord API limits (https://discord.com/developers/docs/resources/message, .../channel#embed-object-embed-limits).
CONTENT_LIMIT = 2000
EMBED_TITLE_LIMIT = 256
EMBED_DESCRIPTION_LIMIT = 4096
EMBED_FIELD_NAME_LIMIT = 256
EMBED_FIELD_VALUE_LIMIT = 1024
EMBED_FIELDS_LIMIT = 25
EMBED_FOOTER_LIMIT = 2048
EMBED_TOTAL_LIMIT = 6000
"""Sum of every embed's title, description, field names and values, footer and author in one message."""
EMBEDS_PER_MESSAGE = 10
CHOICES_LIMIT = 25
CHOICE_NAME_LIMIT = 100
THREAD_NAME_LIMIT = 100

ACK_DEADLINE_S = 3.0
"""Discord drops an interaction that is not acknowledged within 3 s of its creation."""
TOKEN_LIFETIME = datetime.timedelta(minutes=15)
"""Interaction tokens (followups, edits of the original response) expire 15 minutes after creation."""
TOKEN_SAFETY_MARGIN = datetime.timedelta(seconds=30)
"""Stop using the token this long before it expires: a request in flight must still land."""

# The bot's own caps.
MAX_QUESTION_CHARS = 1000
MAX_ANSWER_TOKENS = 1024
"""Upper bound on ``max_new_tokens`` the bot asks for, whatever the engine settings say."""
MAX_CARDS_PER_MESSAGE = 5
"""``[[card]]`` lookups answered per message (the rest are ignored, and the reply says so)."""
STREAM_PREVIEW_CHARS = 1900
"""Streaming edits show the tail of the text so far, below the 2000-character content limit."""


class Clock(Protocol):
    """Monotonic seconds for intervals, wall-clock UTC for Discord deadlines."""

    def monotonic(self) -> float: ...

    def now(self) -> datetime.datetime: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime.datetime:
        return discord.utils.utcnow()


def token_expires_at(interaction: discord.Interaction) -> datetime.datetime:
    """When the interaction's token stops working (its snowflake time + 15 minutes)."""
    return discord.utils.snowflake_time(interaction.id) + TOKEN_LIFETIME


def token_usable(interaction: discord.Interaction, clock: Clock) -> bool:
    """True while followups and edits through the interaction token are still safe to send."""
    return clock.now() < token_expires_at(interaction) - TOKEN_SAFETY_MARGIN


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a user's question was not started; ``message`` is shown to them, ephemeral."""

    reason: str
    message: str


class UserGate:
    """One generation at a time per user, and a cooldown between the starts of two questions.

    The cooldown is a discord.py ``CooldownMapping`` (one token per ``cooldown_s``, keyed by user id) read
    on the bot's clock. In memory: a restart forgets cooldowns, which is harmless. The mapping drops
    entries older than the cooldown on each acquire, so it stays as small as the set of recently active
    users.
    """

    def __init__(self, cooldown_s: float, clock: Clock | None = None) -> None:
        self.cooldown_s = cooldown_s
        self.clock: Clock = clock or SystemClock()
        self._busy: set[int] = set()
        self._cooldowns: commands.CooldownMapping[int] = commands.CooldownMapping.from_cooldown(
            1, cooldown_s, _user_key
        )

    def try_acquire(self, user_id: int) -> Rejection | None:
        """Reserve the user's slot; ``None`` on success (call :meth:`release` when done)."""
        # discord.py's Cooldown reads ``current or time.time()``: a clock at exactly 0.0 would mix in wall time
        # (SystemClock's monotonic never is; the tests' clock starts at 1000).
        now = self.clock.monotonic()
        bucket = self._cooldowns.get_bucket(user_id, now)
        assert bucket is not None  # a keyed mapping always has one
        if user_id in self._busy:
            return Rejection("busy", "You already have a question in progress. Please wait for its answer.")
        wait = bucket.get_retry_after(now)
        if wait > 0:
            return Rejection("cooldown", f"Please wait {math.ceil(wait)} s before asking another question.")
        bucket.reset()  # a cooldown that ends exactly now is over (the bucket itself waits for "after")
        bucket.update_rate_limit(now)
        self._busy.add(user_id)
        return None

    def release(self, user_id: int) -> None:
        self._busy.discard(user_id)

    def is_busy(self, user_id: int) -> bool:
        return user_id in self._busy


def _user_key(user_id: int) -> int:
    return user_id
