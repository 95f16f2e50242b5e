"""Gateway payloads the harness builds (members, channels, messages, threads) and posting messages."""

from __future__ import annotations

import itertools
from typing import Any

import discord
from discord.ext.test import backend as back
from discord.ext.test import factories as facts
from discord.ext.test import state as dstate

from tests.bot.harness.records import FakeClock, SentMessage, http_error


class Payloads:
    """Payload builders of :class:`~tests.bot.harness.core.DiscordHarness` (a mixin: it sets the fields)."""

    bot: discord.Client
    clock: FakeClock
    guild: discord.Guild
    channel: discord.TextChannel
    members: list[discord.Member]
    messages: dict[int, SentMessage]
    threads: dict[int, dict]
    deleted_channels: set[int]
    synced: dict[int | None, list[dict]]
    send_attempts: list[int]
    _ids: itertools.count

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

    def delete_message(self, message_id: int) -> None:
        """Someone deletes a bot message: later edits of it raise NotFound."""
        sent = self.messages.get(int(message_id))
        if sent is not None:
            sent.deleted = True
