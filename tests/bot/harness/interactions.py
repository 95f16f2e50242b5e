"""Interactions sent the way the gateway does: slash commands, autocomplete, buttons, modals."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import discord
from discord.ext.test import factories as facts

from tests.bot.harness.payloads import Payloads
from tests.bot.harness.records import ATTACHMENT_LIMIT, InteractionRecord, SentMessage

if TYPE_CHECKING:
    from tests.bot.harness.fake_http import InteractionServer


class Interactions(Payloads):
    """The interaction side of :class:`~tests.bot.harness.core.DiscordHarness` (a mixin)."""

    server: InteractionServer

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
