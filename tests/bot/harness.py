"""Discord without Discord: every fake the bot tests need, in one tested module.

* dpytest runs the gateway side (guild, channels, members, messages, reactions) and its fake HTTP.
  dpytest refuses sharded clients, so :meth:`DiscordHarness.start` does its ``configure`` itself.
* :class:`HarnessHttp` extends dpytest's fake HTTP with what it lacks: threads, command sync, NotFound
  on deleted messages and channels, and a record of every payload (components, allowed mentions).
* :class:`InteractionServer` replaces the interaction endpoints of ``AsyncWebhookAdapter`` (callback,
  followups, edits, deletes) and behaves like Discord: 3 s to acknowledge, one acknowledgement only,
  the first followup after a defer completes the deferred message, tokens expire after 15 minutes,
  edits of a deleted message raise NotFound.
* Interactions are REAL ``discord.Interaction`` objects built from gateway payloads and dispatched the
  way the gateway does (``ConnectionState.parse_interaction_create`` -> ``CommandTree._call`` or the
  view store), so checks, transformers, autocomplete and persistent views all run for real.

Time: :class:`FakeClock` is the bot's clock (``HexcoreBot(clock=...)``); ``clock.advance(s)`` moves both
monotonic and wall time, so deadlines (3 s ack, 15 min token, cooldowns, stream throttling) are tested
without sleeping.

Usage (the ``harness`` fixture in tests/bot/conftest.py does the setup)::

    h = await DiscordHarness.start(bot, clock=clock)     # after this, setup_hook has run
    rec = await h.slash("ask", question="...", user=1)    # user: member or index; channel=...; wait=False
    rec = await h.slash("admin ban", options={"user": h.members[1]})  # subcommands; clashing option names
    rec.kinds(); rec.callback_type; rec.original.text(); rec.followups; rec.ephemeral_text()
    choices = await h.autocomplete("card", "name", name="tarm")
    click = await h.click(rec.original, views.HELPFUL_ID, user=2)
    done = await h.submit_modal(click, {"Reason": "wrong rule"})     # after a button that showed a modal
    msg = await h.message("[[Ponder]]", channel=thread)  # a member posts; waits for on_message handlers
    await h.react(rec.original, "👍", user=1)             # raw (and cached) reaction events
    h.bot_messages(channel); h.delete_message(id); await h.archive_thread(id); await h.delete_thread(id)
    h.set_permissions(channel, h.guild.me, send_messages=False); h.send_attempts
    h.synced[None]                                        # command payloads synced globally
    h.errors.records                                      # ERROR logs from discord.py and the bot
    await h.settle()                                      # pending events and bot.background tasks
    await h.close()
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import discord
from discord.ext.test import backend as back
from discord.ext.test import callbacks, runner, websocket
from discord.ext.test import factories as facts
from discord.ext.test import state as dstate
from discord.webhook.async_ import AsyncWebhookAdapter

from bot import limits

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


class HarnessHttp(back.FakeHttp):
    """dpytest's fake HTTP plus threads, command sync, deletions and a payload record."""

    def __init__(self, harness: DiscordHarness, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.harness = harness

    async def send_message(self, channel_id: int, *, params: Any) -> dict:
        channel = back._get_higher_locs(1).get("channel") or self.state.get_channel(int(channel_id))
        self.harness.send_attempts.append(int(channel_id))
        if int(channel_id) in self.harness.deleted_channels:
            raise http_error(404, 10003, "Unknown Channel")
        me = channel.guild.me if getattr(channel, "guild", None) else None
        if me is not None and not channel.permissions_for(me).send_messages:
            raise http_error(403, 50013, "Missing Permissions")
        payload = dict(params.payload or {})
        message, data = self.harness._post(channel, self.state.user, payload.get("content") or "", payload)
        await callbacks.dispatch_event("send_message", message)
        return data

    async def edit_message(self, channel_id: int, message_id: int, *, params: Any) -> dict:
        sent = self.harness.messages.get(int(message_id))
        if sent is None or sent.deleted or int(channel_id) in self.harness.deleted_channels:
            raise http_error(404, 10008, "Unknown Message")
        payload = dict(params.payload or {})
        sent.apply(payload)
        stored = self.harness._backend_message(int(channel_id), int(message_id))
        stored.update({k: v for k, v in payload.items() if k in ("content", "embeds", "components")})
        stored["edited_timestamp"] = discord.utils.utcnow().isoformat()
        return dict(stored)

    async def delete_message(self, channel_id: int, message_id: int, *, reason: str | None = None) -> None:
        self.harness.delete_message(int(message_id))

    async def start_thread_with_message(
        self,
        channel_id: int,
        message_id: int,
        *,
        name: str,
        auto_archive_duration: int,
        rate_limit_per_user: int | None = None,
        reason: str | None = None,
    ) -> dict:
        if int(message_id) in self.harness.threads:
            raise http_error(400, 160004, "A thread has already been created for this message")
        channel = self.state.get_channel(int(channel_id))
        data = self.harness._thread_payload(int(message_id), channel, name, owner_id=self.state.user.id)
        data["thread_metadata"]["auto_archive_duration"] = auto_archive_duration
        self.harness.threads[int(message_id)] = data
        self.state.parse_thread_create({**data, "newly_created": True})
        return data

    async def bulk_upsert_global_commands(self, application_id: int, payload: list[dict]) -> list[dict]:
        return self._synced(None, payload)

    async def bulk_upsert_guild_commands(
        self, application_id: int, guild_id: int, payload: list[dict]
    ) -> list[dict]:
        return self._synced(int(guild_id), payload)

    def _synced(self, guild_id: int | None, payload: list[dict]) -> list[dict]:
        self.harness.synced[guild_id] = payload
        app_id = str(self.state.application_id)
        out = [
            {**cmd, "id": str(facts.make_id()), "application_id": app_id, "version": "1"} for cmd in payload
        ]
        if guild_id is not None:
            out = [{**cmd, "guild_id": str(guild_id)} for cmd in out]
        return out


class InteractionServer:
    """Discord's interaction endpoints, installed over ``AsyncWebhookAdapter`` while the harness runs."""

    METHODS = (
        "create_interaction_response",
        "execute_webhook",
        "get_original_interaction_response",
        "edit_original_interaction_response",
        "delete_original_interaction_response",
        "get_webhook_message",
        "edit_webhook_message",
        "delete_webhook_message",
    )

    def __init__(self, harness: DiscordHarness) -> None:
        self.h = harness
        self.records: dict[int, InteractionRecord] = {}
        self.by_token: dict[str, InteractionRecord] = {}
        self._saved: dict[str, Any] = {}

    def install(self) -> None:
        for name in self.METHODS:
            self._saved[name] = AsyncWebhookAdapter.__dict__[name]
            impl = getattr(self, name)

            async def method(_adapter: Any, *args: Any, _impl: Callable = impl, **kwargs: Any) -> Any:
                return await _impl(*args, **kwargs)

            setattr(AsyncWebhookAdapter, name, method)

    def uninstall(self) -> None:
        for name, original in self._saved.items():
            setattr(AsyncWebhookAdapter, name, original)
        self._saved.clear()

    # ----------------------------------------------------------------------------- checks

    def _elapsed(self, rec: InteractionRecord) -> float:
        loop_s = asyncio.get_running_loop().time() - rec.started_loop
        return loop_s + (self.h.clock.monotonic() - rec.started_clock)

    def _record(self, token: str) -> InteractionRecord:
        rec = self.by_token.get(token)
        if rec is None:
            raise http_error(404, 10015, "Unknown Webhook")
        if self.h.clock.now() >= discord.utils.snowflake_time(rec.id) + limits.TOKEN_LIFETIME:
            raise http_error(401, 50027, "Invalid Webhook Token")
        return rec

    def _reply(
        self, rec: InteractionRecord, kind: str, payload: dict | None, message: SentMessage | None
    ) -> None:
        rec.replies.append(Reply(kind, payload, message.id if message else None, self._elapsed(rec)))

    def _new_message(self, rec: InteractionRecord, payload: dict, flags: int) -> SentMessage:
        msg = SentMessage(id=facts.make_id(), channel_id=rec.channel_id, flags=flags, interaction_id=rec.id)
        msg.apply(payload)
        self.h.messages[msg.id] = msg
        return msg

    def _original(self, rec: InteractionRecord) -> SentMessage:
        msg = rec.original
        if (
            msg is None
            and rec.source_message_id is not None
            and rec.callback_type in (DEFERRED_UPDATE, UPDATE_MESSAGE)
        ):
            msg = self.h.messages.get(rec.source_message_id)
        if msg is None or msg.deleted:
            raise http_error(404, 10008, "Unknown Message")
        return msg

    @staticmethod
    def _payload(payload: dict | None, multipart: list[dict] | None) -> dict:
        if payload is not None:
            return dict(payload)
        if multipart:
            return json.loads(multipart[0]["value"])
        return {}

    # -------------------------------------------------------------------------- endpoints

    async def create_interaction_response(
        self, interaction_id: int, token: str, *, params: Any, **_: Any
    ) -> dict:
        rec = self.records[int(interaction_id)]
        if rec.acknowledged:
            raise http_error(400, 40060, "Interaction has already been acknowledged.")
        if self._elapsed(rec) > limits.ACK_DEADLINE_S:
            raise http_error(404, 10062, "Unknown interaction")
        body = dict(params.payload or {})
        kind, data = body["type"], dict(body.get("data") or {})
        rec.callback_type = kind
        message: SentMessage | None = None
        if kind == CHANNEL_MESSAGE:
            message = rec.original = self._new_message(rec, data, data.get("flags", 0))
        elif kind == DEFERRED_MESSAGE:
            message = rec.original = self._new_message(rec, {}, LOADING | (data.get("flags", 0) & EPHEMERAL))
        elif kind == UPDATE_MESSAGE:
            message = self.h.messages.get(rec.source_message_id or 0)
            if message is not None:
                message.apply(data)
        elif kind == AUTOCOMPLETE:
            rec.choices = list(data.get("choices", []))
        elif kind == MODAL:
            rec.modal = data
        self._reply(rec, "callback", body, message)
        result: dict = {
            "interaction": {
                "id": str(rec.id),
                "type": rec.type.value,
                "response_message_loading": kind == DEFERRED_MESSAGE,
                "response_message_ephemeral": bool(message and message.ephemeral),
            }
        }
        if message is not None:
            result["interaction"]["response_message_id"] = str(message.id)
            result["resource"] = {"type": kind, "message": self.h._message_payload(message)}
        return result

    async def execute_webhook(
        self,
        webhook_id: int,
        token: str,
        *,
        payload: dict | None = None,
        multipart: Any = None,
        wait: bool = False,
        **_: Any,
    ) -> dict | None:
        rec = self._record(token)
        if not rec.acknowledged:
            raise http_error(404, 10015, "Unknown Webhook")
        body = self._payload(payload, multipart)
        original = rec.original
        if rec.callback_type == DEFERRED_MESSAGE and original and original.loading and not original.deleted:
            original.apply(body)  # Discord: the first followup completes the deferred message
            original.flags &= ~LOADING
            message = original
        else:
            message = self._new_message(rec, body, body.get("flags", 0) & EPHEMERAL)
            rec.followups.append(message)
        self._reply(rec, "followup", body, message)
        return self.h._message_payload(message) if wait else None

    async def get_original_interaction_response(self, application_id: int, token: str, **_: Any) -> dict:
        rec = self._record(token)
        message = self._original(rec)
        self._reply(rec, "get", None, message)
        return self.h._message_payload(message)

    async def edit_original_interaction_response(
        self, application_id: int, token: str, *, payload: dict | None = None, multipart: Any = None, **_: Any
    ) -> dict:
        rec = self._record(token)
        message = self._original(rec)
        body = self._payload(payload, multipart)
        message.apply(body)
        message.flags &= ~LOADING
        self._reply(rec, "edit", body, message)
        return self.h._message_payload(message)

    async def delete_original_interaction_response(self, application_id: int, token: str, **_: Any) -> None:
        rec = self._record(token)
        message = self._original(rec)
        message.deleted = True
        self._reply(rec, "delete", None, message)

    def _followup(self, rec: InteractionRecord, message_id: Any) -> SentMessage:
        message = self.h.messages.get(int(message_id))
        if message is None or message.deleted or message.interaction_id != rec.id:
            raise http_error(404, 10008, "Unknown Message")
        return message

    async def get_webhook_message(self, webhook_id: int, token: str, message_id: int, **_: Any) -> dict:
        rec = self._record(token)
        return self.h._message_payload(self._followup(rec, message_id))

    async def edit_webhook_message(
        self,
        webhook_id: int,
        token: str,
        message_id: int,
        *,
        payload: dict | None = None,
        multipart: Any = None,
        **_: Any,
    ) -> dict:
        rec = self._record(token)
        message = self._followup(rec, message_id)
        body = self._payload(payload, multipart)
        message.apply(body)
        self._reply(rec, "edit", body, message)
        return self.h._message_payload(message)

    async def delete_webhook_message(self, webhook_id: int, token: str, message_id: int, **_: Any) -> None:
        rec = self._record(token)
        message = self._followup(rec, message_id)
        message.deleted = True
        self._reply(rec, "delete", None, message)


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


class DiscordHarness:
    """One fake guild with a text channel and members around a real bot. See the module docstring."""

    def __init__(self, bot: discord.Client, clock: FakeClock) -> None:
        self.bot = bot
        self.clock = clock
        self.server = InteractionServer(self)
        self.messages: dict[int, SentMessage] = {}
        """Every message the bot posted, by id (interaction messages and channel messages)."""
        self.threads: dict[int, dict] = {}
        self.deleted_channels: set[int] = set()
        self.synced: dict[int | None, list[dict]] = {}
        """Command payloads synced, by guild id (None = global)."""
        self.send_attempts: list[int] = []
        """Channel id of every channel-message send the bot attempted, refused ones included."""
        self.errors = LogCapture()
        self._ids = itertools.count(1)
        self.guild: discord.Guild
        self.channel: discord.TextChannel
        self.members: list[discord.Member]

    # ------------------------------------------------------------------------------ setup

    @classmethod
    async def start(
        cls, bot: discord.Client, *, clock: FakeClock | None = None, members: int = 3
    ) -> DiscordHarness:
        """Configure dpytest around ``bot`` (sharded or not), then run its ``setup_hook``."""
        harness = cls(bot, clock or FakeClock())
        await bot._async_setup_hook()
        harness._configure(members)
        harness.server.install()
        for name in ("discord", "bot"):
            logging.getLogger(name).addHandler(harness.errors)
        await bot.setup_hook()
        return harness

    def _configure(self, member_count: int) -> None:
        bot = self.bot
        loop = asyncio.get_running_loop()
        old_state = bot._connection
        http = HarnessHttp(self, loop)
        bot.http = http
        bot.ws = websocket.FakeWebSocket(None, loop=loop)
        state = dstate.FakeState(bot, http=http, loop=loop)
        http.state = state
        state.allowed_mentions = old_state.allowed_mentions
        # The bot runs without the members intent; the fake guild still needs its members cached.
        state.member_cache_flags = discord.MemberCacheFlags.all()
        state._translator = old_state._translator
        bot._connection = state
        back._cur_config = back.BackendState({}, state)
        state.application_id = state.user.id
        # the command tree was bound to the replaced state and HTTP client
        bot.tree._state = state
        bot.tree._http = http
        state._command_tree = bot.tree
        self._install_reaction_shim(state)

        callbacks.set_callback(runner._message_callback, "send_message")
        state.stop_dispatch()
        self.guild = back.make_guild("Hexcore Test Guild")
        self.channel = back.make_text_channel("general", self.guild)
        self.members = []
        for i in range(member_count):
            user = back.make_user(f"Player{i}", f"{i + 1:04}")
            self.members.append(back.make_member(user, self.guild))
        back.make_member(state.user, self.guild)
        state.start_dispatch()
        runner._cur_config = runner.RunnerConfig(bot, [self.guild], [self.channel], self.members)

    @staticmethod
    def _install_reaction_shim(state: dstate.FakeState) -> None:
        """dpytest omits ``type`` and ``burst`` in reaction payloads; discord.py 2.7 requires them."""
        for name in ("parse_message_reaction_add", "parse_message_reaction_remove"):
            original = getattr(state, name)

            def parse(data: dict, _original: Callable = original) -> None:
                data.setdefault("type", 0)
                data.setdefault("burst", False)
                _original(data)

            setattr(state, name, parse)

    async def close(self) -> None:
        await runner.run_all_events()
        for name in ("discord", "bot"):
            logging.getLogger(name).removeHandler(self.errors)
        self.server.uninstall()
        await self.bot.close()
        back._cur_config = None
        runner._cur_config = None

    # ----------------------------------------------------------------------------- payloads

    @property
    def state(self) -> dstate.FakeState:
        return self.bot._connection  # type: ignore[return-value]

    def _snowflake(self) -> int:
        return discord.utils.time_snowflake(self.clock.now()) + next(self._ids)

    @staticmethod
    def _member_payload(member: discord.Member) -> dict:
        return {
            "user": facts.dict_from_user(member._user),
            "roles": [str(r.id) for r in member.roles if r != member.guild.default_role],
            "joined_at": (member.joined_at or discord.utils.utcnow()).isoformat(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "permissions": str(discord.Permissions.all().value),
        }

    def _channel_payload(self, channel: Any) -> dict:
        data = {
            "id": str(channel.id),
            "type": channel.type.value,
            "guild_id": str(self.guild.id),
            "name": channel.name,
        }
        if isinstance(channel, discord.Thread):
            data.update(self.threads.get(channel.id, {}))
            data["id"] = str(channel.id)
        data["permissions"] = str(discord.Permissions.all().value)
        return data

    def _message_payload(self, message: SentMessage) -> dict:
        return {
            "id": str(message.id),
            "channel_id": str(message.channel_id),
            "guild_id": str(self.guild.id),
            "author": {**facts.dict_from_user(self.state.user), "bot": True},
            "content": message.content,
            "embeds": message.embeds,
            "components": message.components,
            "attachments": [],
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "pinned": False,
            "tts": False,
            "type": 20 if message.interaction_id else 0,
            "timestamp": discord.utils.snowflake_time(message.id).isoformat(),
            "edited_timestamp": None,
            "flags": message.flags,
            "application_id": str(self.state.application_id),
        }

    def _thread_payload(self, thread_id: int, parent: Any, name: str, *, owner_id: int) -> dict:
        now = discord.utils.utcnow().isoformat()
        return {
            "id": str(thread_id),
            "guild_id": str(self.guild.id),
            "parent_id": str(parent.id),
            "owner_id": str(owner_id),
            "name": name,
            "type": discord.ChannelType.public_thread.value,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": now,
                "locked": False,
                "create_timestamp": now,
            },
        }

    def _backend_message(self, channel_id: int, message_id: int) -> dict:
        for data in back._cur_config.messages.get(channel_id, []):
            if int(data["id"]) == message_id:
                return data
        raise http_error(404, 10008, "Unknown Message")

    def _post(
        self, channel: Any, author: Any, content: str, payload: dict | None = None
    ) -> tuple[discord.Message, dict]:
        """A message appears in ``channel`` (dispatched as MESSAGE_CREATE); threads keep their guild."""
        payload = payload or {}
        embeds = [discord.Embed.from_dict(e) for e in payload.get("embeds") or []]
        data = facts.make_message_dict(
            channel, author, content=content, embeds=embeds, guild_id=self.guild.id
        )
        data["components"] = list(payload.get("components") or [])
        if isinstance(author, discord.Member):
            data["member"] = {k: v for k, v in self._member_payload(author).items() if k != "user"}
        back._cur_config.messages.setdefault(channel.id, []).append(data)
        if author.id == self.state.user.id:
            sent = SentMessage(id=int(data["id"]), channel_id=channel.id)
            sent.apply({"content": content, **payload})
            self.messages[sent.id] = sent
        self.state.parse_message_create(data)
        message = self.state._get_message(int(data["id"]))
        return message, dict(data)

    # --------------------------------------------------------------------------- dispatching

    def _pick(self, user: discord.Member | int | None, channel: Any) -> tuple[discord.Member, Any]:
        if user is None:
            user = self.members[0]
        elif isinstance(user, int):
            user = self.members[user]
        return user, channel if channel is not None else self.channel

    async def dispatch(
        self,
        kind: discord.InteractionType,
        data: dict,
        *,
        user: discord.Member | int | None = None,
        channel: Any = None,
        message: SentMessage | None = None,
        wait: bool = True,
        timeout: float = 10.0,
    ) -> InteractionRecord:
        """Send an INTERACTION_CREATE the way the gateway does and record every reply."""
        member, channel = self._pick(user, channel)
        iid = self._snowflake()
        payload: dict = {
            "id": str(iid),
            "application_id": str(self.state.application_id),
            "type": kind.value,
            "token": f"token-{iid}",
            "version": 1,
            "guild_id": str(self.guild.id),
            "channel_id": str(channel.id),
            "channel": self._channel_payload(channel),
            "member": self._member_payload(member),
            "data": data,
            "locale": "en-US",
            "guild_locale": "en-US",
            "app_permissions": str(discord.Permissions.all().value),
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild.id)},
            "context": 0,
            "attachment_size_limit": ATTACHMENT_LIMIT,
        }
        if message is not None:
            payload["message"] = self._message_payload(message)
        loop = asyncio.get_running_loop()
        rec = InteractionRecord(
            id=iid,
            token=payload["token"],
            type=kind,
            user_id=member.id,
            channel_id=channel.id,
            source_message_id=message.id if message else None,
            started_loop=loop.time(),
            started_clock=self.clock.monotonic(),
        )
        self.server.records[iid] = rec
        self.server.by_token[rec.token] = rec
        before = asyncio.all_tasks()
        self.state.parse_interaction_create(payload)  # type: ignore[arg-type]
        rec.tasks = [t for t in asyncio.all_tasks() - before if not t.done()]
        if wait:
            await rec.wait(timeout)
        return rec

    def _command_data(self, name: str, options: dict[str, Any], focused: str | None = None) -> dict:
        """Application-command data for ``/name`` (``"group sub"`` for subcommands) from the tree's own schema."""
        root, *subs = name.split()
        command = self.bot.tree.get_command(root) or self.bot.tree.get_command(root, guild=self.guild)
        if command is None:
            raise LookupError(f"no slash command /{root}")
        schema = command.to_dict(self.bot.tree)
        data: dict = {"id": str(self._snowflake()), "name": root, "type": 1}
        node, target = schema, data
        for sub in subs:
            node = next(
                (o for o in node.get("options", []) if o["name"] == sub and o["type"] in (1, 2)), None
            )
            if node is None:
                raise LookupError(f"no subcommand {sub!r} in /{name}")
            child = {"name": sub, "type": node["type"], "options": []}
            target["options"] = [child]
            target = child
        params = {o["name"]: o for o in node.get("options", []) if o["type"] not in (1, 2)}
        unknown = set(options) - set(params)
        if unknown:
            raise TypeError(f"/{name} has no option(s) {sorted(unknown)}; it has {sorted(params)}")
        resolved: dict = {}
        out = []
        for key, value in options.items():
            otype = params[key]["type"]
            out.append({"name": key, "type": otype, "value": self._option_value(otype, value, resolved)})
            if key == focused:
                out[-1]["focused"] = True
        target["options"] = out
        if resolved:
            data["resolved"] = resolved
        return data

    def _option_value(self, otype: int, value: Any, resolved: dict) -> Any:
        if otype in (6, 9) and isinstance(value, discord.Member):  # user, mentionable
            resolved.setdefault("users", {})[str(value.id)] = facts.dict_from_user(value._user)
            member = {k: v for k, v in self._member_payload(value).items() if k != "user"}
            resolved.setdefault("members", {})[str(value.id)] = member
            return str(value.id)
        if otype == 7 and hasattr(value, "id"):
            resolved.setdefault("channels", {})[str(value.id)] = self._channel_payload(value)
            return str(value.id)
        if otype == 8 and isinstance(value, discord.Role):
            resolved.setdefault("roles", {})[str(value.id)] = facts.dict_from_role(value)
            return str(value.id)
        return value

    async def slash(
        self,
        command: str,
        /,
        *,
        user: Any = None,
        channel: Any = None,
        wait: bool = True,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> InteractionRecord:
        """Run ``/command option=value ...`` as ``user`` (a member or index) in ``channel``.

        Options whose names clash with these keywords (``user``, ``channel``...) go in ``options``.
        """
        data = self._command_data(command, {**kwargs, **(options or {})})
        return await self.dispatch(
            discord.InteractionType.application_command, data, user=user, channel=channel, wait=wait
        )

    async def autocomplete(
        self,
        command: str,
        focused: str,
        /,
        *,
        user: Any = None,
        channel: Any = None,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[dict]:
        """The choices offered while option ``focused`` is typed (its value among the options, default "")."""
        values = {**kwargs, **(options or {})}
        values.setdefault(focused, "")
        data = self._command_data(command, values, focused=focused)
        rec = await self.dispatch(discord.InteractionType.autocomplete, data, user=user, channel=channel)
        assert rec.choices is not None, f"no autocomplete answer: {rec.kinds()}"
        return rec.choices

    async def click(
        self, message: SentMessage | int, custom_id: str, *, user: Any = None, wait: bool = True
    ) -> InteractionRecord:
        """Press the button ``custom_id`` on a message the bot posted."""
        sent = message if isinstance(message, SentMessage) else self.messages[int(message)]
        if custom_id not in sent.custom_ids():
            raise LookupError(f"message {sent.id} has no component {custom_id!r} (has {sent.custom_ids()})")
        channel = self.state.get_channel(sent.channel_id)
        data = {"custom_id": custom_id, "component_type": 2}
        return await self.dispatch(
            discord.InteractionType.component, data, user=user, channel=channel, message=sent, wait=wait
        )

    async def submit_modal(
        self, shown: InteractionRecord, values: dict[str, str], *, user: Any = None
    ) -> InteractionRecord:
        """Fill in the modal ``shown`` responded with (inputs by label or custom_id) and submit it."""
        assert shown.modal is not None, f"interaction {shown.id} showed no modal"
        inputs: list[tuple[str | None, dict]] = []
        for row in shown.modal.get("components", []):
            if row.get("type") == 18:  # a Label around one input
                inputs.append((row.get("label"), row["component"]))
            else:
                inputs.extend((c.get("label"), c) for c in row.get("components", []))
        rows = []
        for label, item in inputs:
            key = item.get("custom_id")
            value = values.get(label or "", values.get(key or ""))
            if key and value is not None:
                rows.append({"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]})
        data = {"custom_id": shown.modal["custom_id"], "components": rows}
        channel = self.state.get_channel(shown.channel_id)
        return await self.dispatch(discord.InteractionType.modal_submit, data, user=user, channel=channel)

    async def message(self, content: str, *, user: Any = None, channel: Any = None) -> discord.Message:
        """A member posts ``content`` (in a text channel or thread); waits for the bot's handlers."""
        member, channel = self._pick(user, channel)
        message, _ = self._post(channel, member, content)
        await runner.run_all_events()
        return message

    async def react(
        self,
        message: SentMessage | discord.Message | int,
        emoji: str,
        *,
        user: Any = None,
        remove: bool = False,
    ) -> None:
        """``user`` adds (or removes) a unicode ``emoji`` reaction on a message; waits for the handlers."""
        member, _ = self._pick(user, None)
        if isinstance(message, int):
            message = self.messages[message]
        message_id = message.id
        channel_id = message.channel_id if isinstance(message, SentMessage) else message.channel.id
        data = {
            "message_id": str(message_id),
            "channel_id": str(channel_id),
            "user_id": str(member.id),
            "guild_id": str(self.guild.id),
            "emoji": {"id": None, "name": emoji},
            "member": self._member_payload(member),
            "type": 0,
            "burst": False,
        }
        if remove:
            data.pop("member")
            self.state.parse_message_reaction_remove(data)
        else:
            self.state.parse_message_reaction_add(data)
        await runner.run_all_events()

    # ------------------------------------------------------------------------------- world

    def delete_message(self, message_id: int) -> None:
        """Someone deletes a bot message: later edits of it raise NotFound."""
        sent = self.messages.get(int(message_id))
        if sent is not None:
            sent.deleted = True

    def set_permissions(
        self, channel: discord.TextChannel, target: discord.Member | discord.Role, **perms: bool
    ) -> None:
        """A channel overwrite (dpytest's helper sends string types that discord.py 2 ignores)."""
        allow, deny = discord.PermissionOverwrite(**perms).pair()
        data = facts.dict_from_channel(channel)
        data["guild_id"] = self.guild.id
        entry = {"id": str(target.id), "type": 0 if isinstance(target, discord.Role) else 1}
        entry.update(allow=str(allow.value), deny=str(deny.value))
        others = [o for o in data.get("permission_overwrites", []) if int(o["id"]) != target.id]
        data["permission_overwrites"] = [*others, entry]
        self.state.parse_channel_update(data)

    def thread(self, thread_id: int) -> discord.Thread:
        thread = self.guild.get_thread(thread_id)
        assert thread is not None, f"no thread {thread_id}"
        return thread

    async def archive_thread(self, thread_id: int) -> None:
        data = self.threads[thread_id]
        data["thread_metadata"]["archived"] = True
        self.state.parse_thread_update(dict(data))
        await runner.run_all_events()

    async def delete_thread(self, thread_id: int) -> None:
        data = self.threads.pop(thread_id)
        self.deleted_channels.add(thread_id)
        self.state.parse_thread_delete(
            {
                "id": data["id"],
                "guild_id": data["guild_id"],
                "parent_id": data["parent_id"],
                "type": data["type"],
            }
        )
        await runner.run_all_events()

    def bot_messages(self, channel: Any = None) -> list[SentMessage]:
        """Messages the bot posted and that still exist, oldest first (optionally in one channel)."""
        found = [m for m in self.messages.values() if not m.deleted]
        if channel is not None:
            cid = channel if isinstance(channel, int) else channel.id
            found = [m for m in found if m.channel_id == cid]
        return sorted(found, key=lambda m: m.id)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait for pending gateway events and the bot's background tasks."""
        await runner.run_all_events()
        background = getattr(self.bot, "background", None)
        if background is not None:
            await background.wait(timeout)
