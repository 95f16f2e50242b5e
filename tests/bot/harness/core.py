"""The harness itself: one fake guild around a real bot (see the package docstring)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import discord
from discord.ext.test import backend as back
from discord.ext.test import callbacks, runner, websocket
from discord.ext.test import factories as facts
from discord.ext.test import state as dstate

from tests.bot.harness.fake_http import HarnessHttp, InteractionServer
from tests.bot.harness.interactions import Interactions
from tests.bot.harness.records import FakeClock, LogCapture, SentMessage


class DiscordHarness(Interactions):
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
