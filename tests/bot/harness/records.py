"""What the harness records: sent messages, interaction replies, logged errors; its clock."""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, field

import discord
from discord.ext.test import backend as back

EPHEMERAL = 1 << 6
LOADING = 1 << 7
ATTACHMENT_LIMIT = 8 * 1024 * 1024

# interaction callback types
CHANNEL_MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, AUTOCOMPLETE, MODAL = 4, 5, 6, 7, 8, 9


def http_error(status: int, code: int, message: str) -> discord.HTTPException:
    """The exception discord.py raises for a Discord error response."""
    cls = {403: discord.Forbidden, 404: discord.NotFound}.get(status, discord.HTTPException)
    return cls(back.FakeRequest(status, message), {"code": code, "message": message})


class FakeClock:
    """The bot's clock in tests: frozen until :meth:`advance`; wall time is real time plus the advances."""

    def __init__(self) -> None:
        self._mono = 1000.0
        self._shift = datetime.timedelta()

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime.datetime:
        return discord.utils.utcnow() + self._shift

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._shift += datetime.timedelta(seconds=seconds)


@dataclass
class SentMessage:
    """A message the bot posted (interaction response, followup or channel message), as it is now."""

    id: int
    channel_id: int
    content: str = ""
    embeds: list[dict] = field(default_factory=list)
    components: list[dict] = field(default_factory=list)
    flags: int = 0
    allowed_mentions: dict | None = None
    interaction_id: int | None = None
    deleted: bool = False
    payloads: list[dict] = field(default_factory=list)
    """Every payload that created or edited it, in order."""

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    @property
    def edits(self) -> int:
        return max(0, len(self.payloads) - 1)

    def apply(self, payload: dict) -> None:
        self.payloads.append(payload)
        if "content" in payload:
            self.content = payload["content"] or ""
        if "embeds" in payload:
            self.embeds = list(payload["embeds"] or [])
        if "components" in payload:
            self.components = list(payload["components"] or [])
        if "allowed_mentions" in payload:
            self.allowed_mentions = payload["allowed_mentions"]

    def custom_ids(self) -> list[str]:
        return [
            c["custom_id"] for row in self.components for c in row.get("components", []) if "custom_id" in c
        ]

    def text(self) -> str:
        """Content and every embed's visible text, joined: what a reader sees."""
        parts = [self.content] if self.content else []
        for embed in self.embeds:
            parts.extend(embed.get(k, "") for k in ("title", "description"))
            parts.extend(f"{f['name']}\n{f['value']}" for f in embed.get("fields", []))
            parts.append(embed.get("footer", {}).get("text", ""))
            parts.append(embed.get("author", {}).get("name", ""))
        return "\n".join(p for p in parts if p)


@dataclass
class Reply:
    """One call the bot made about an interaction."""

    kind: str  # callback | followup | edit | delete | get
    payload: dict | None
    message_id: int | None
    elapsed_s: float
    """Since dispatch: real seconds plus simulated (clock) seconds."""


@dataclass
class InteractionRecord:
    id: int
    token: str
    type: discord.InteractionType
    user_id: int
    channel_id: int
    source_message_id: int | None
    started_loop: float
    started_clock: float
    replies: list[Reply] = field(default_factory=list)
    callback_type: int | None = None
    original: SentMessage | None = None
    followups: list[SentMessage] = field(default_factory=list)
    choices: list[dict] | None = None
    modal: dict | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return self.callback_type is not None

    @property
    def deferred(self) -> bool:
        return self.callback_type in (DEFERRED_MESSAGE, DEFERRED_UPDATE)

    def messages(self) -> list[SentMessage]:
        """Messages this interaction produced that still exist."""
        found = ([self.original] if self.original else []) + self.followups
        return [m for m in found if not m.deleted]

    def ephemeral_text(self) -> str:
        return "\n".join(m.text() for m in self.messages() if m.ephemeral)

    def public_messages(self) -> list[SentMessage]:
        return [m for m in self.messages() if not m.ephemeral]

    def kinds(self) -> list[str]:
        return [r.kind for r in self.replies]

    async def wait(self, timeout: float = 10.0) -> InteractionRecord:
        """Wait for the handler tasks of this interaction (command, autocomplete or button) to finish."""
        if self.tasks:
            done, pending = await asyncio.wait(self.tasks, timeout=timeout)
            if pending:
                raise AssertionError(f"interaction {self.id} still running after {timeout} s")
        return self


class LogCapture(logging.Handler):
    """Errors logged by discord.py or the bot while the harness runs (unhandled command/view errors land here)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [
            f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else f"{r.name}: {r.getMessage()}"
            for r in self.records
        ]
