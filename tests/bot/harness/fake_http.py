"""The fake Discord HTTP side: dpytest's HTTP extended, and the interaction endpoints."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord
from discord.ext.test import backend as back
from discord.ext.test import callbacks
from discord.ext.test import factories as facts
from discord.webhook.async_ import AsyncWebhookAdapter

from bot import limits
from tests.bot.harness.records import (
    AUTOCOMPLETE,
    CHANNEL_MESSAGE,
    DEFERRED_MESSAGE,
    DEFERRED_UPDATE,
    EPHEMERAL,
    LOADING,
    MODAL,
    UPDATE_MESSAGE,
    InteractionRecord,
    Reply,
    SentMessage,
    http_error,
)

if TYPE_CHECKING:
    from tests.bot.harness.payloads import Payloads


class HarnessHttp(back.FakeHttp):
    """dpytest's fake HTTP plus threads, command sync, deletions and a payload record."""

    def __init__(self, harness: Payloads, loop: asyncio.AbstractEventLoop) -> None:
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

    def __init__(self, harness: Payloads) -> None:
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
