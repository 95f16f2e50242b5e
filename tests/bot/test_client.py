"""The bot's lifecycle: extensions, persistent views, command sync, mentions, intents, shards; and a meta-test
over every cog's commands."""

from __future__ import annotations

import logging
import sys

import discord
import pytest
from discord import app_commands

from bot import client as client_module
from bot import views
from bot.client import EXTENSIONS, HexcoreBot
from hexcore.settings import BotSettings, Settings
from tests.bot.harness import DiscordHarness

CORE = ("bot.cogs.answers", "bot.cogs.lookups", "bot.cogs.threads")


async def test_core_extensions_load(harness):
    assert set(CORE) <= set(harness.bot.extensions)
    assert harness.bot.extension_errors == {}
    assert {"Answers", "Lookups", "Threads"} <= set(harness.bot.cogs)


async def test_missing_optional_extension_is_logged_not_fatal(engine, bot_config, clock, monkeypatch, caplog):
    monkeypatch.setattr(client_module, "EXTENSIONS", (*CORE, "bot.cogs.not_written_yet"))
    monkeypatch.setattr(client_module, "OPTIONAL_EXTENSIONS", frozenset({"bot.cogs.not_written_yet"}))
    caplog.set_level(logging.INFO, logger="bot.client")
    h = await DiscordHarness.start(HexcoreBot(engine, bot_config, clock=clock), clock=clock)
    try:
        assert set(CORE) <= set(h.bot.extensions) and h.bot.extension_errors == {}
        assert "bot.cogs.not_written_yet is not installed" in caplog.text
    finally:
        await h.close()


async def test_broken_extension_is_logged_and_the_rest_load(engine, bot_config, clock, monkeypatch, tmp_path):
    (tmp_path / "hexcore_broken_ext.py").write_text(
        "async def setup(bot):\n    raise RuntimeError('broken cog')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(client_module, "EXTENSIONS", ("hexcore_broken_ext", *CORE))
    h = await DiscordHarness.start(HexcoreBot(engine, bot_config, clock=clock), clock=clock)
    try:
        assert "broken cog" in h.bot.extension_errors["hexcore_broken_ext"]
        assert set(CORE) <= set(h.bot.extensions)
        assert any("failed to load extension hexcore_broken_ext" in m for m in h.errors.messages())
    finally:
        await h.close()
        sys.modules.pop("hexcore_broken_ext", None)


def test_feedback_and_admin_are_listed_as_optional():
    assert {"bot.cogs.feedback", "bot.cogs.admin"} <= set(EXTENSIONS)
    assert client_module.OPTIONAL_EXTENSIONS == {"bot.cogs.feedback", "bot.cogs.admin"}


async def test_answer_buttons_are_persistent(harness):
    persistent = [v for v in harness.bot.persistent_views if isinstance(v, views.AnswerView)]
    assert len(persistent) == 1
    view = persistent[0]
    assert view.timeout is None and view.is_persistent()
    assert {c.custom_id for c in view.children} == {views.THREAD_ID, views.HELPFUL_ID, views.UNHELPFUL_ID}


async def test_commands_sync_globally_by_default(harness):
    synced = {c["name"] for c in harness.synced[None]}
    assert {"ask", "explain", "teach", "predict", "review", "rule", "card"} <= synced
    assert len(harness.bot.synced_commands) == len(harness.synced[None])


@pytest.mark.parametrize("bot_settings", [{"dev_guild_id": 123456789012345678}], indirect=True)
async def test_commands_sync_to_the_dev_guild(harness):
    assert None not in harness.synced
    assert {"ask", "rule"} <= {c["name"] for c in harness.synced[123456789012345678]}


@pytest.mark.parametrize("bot_settings", [{"shard_count": 4, "shard_ids": [2, 3]}], indirect=True)
async def test_a_secondary_shard_process_does_not_sync_commands(harness):
    assert harness.synced == {} and harness.bot.synced_commands == []
    assert "ask" in {c.name for c in harness.bot.tree.get_commands()}  # the commands still work here


async def test_no_mentions_by_default_and_the_right_intents(engine, bot_config):
    bot = HexcoreBot(engine, bot_config)
    assert bot.allowed_mentions.to_dict() == {"parse": []}
    assert bot.intents.message_content and bot.intents.reactions and bot.intents.guild_messages
    assert not bot.intents.members and not bot.intents.presences
    assert isinstance(bot, discord.AutoShardedClient)


async def test_shards_come_from_settings(engine, settings):
    config = Settings(paths=settings.paths, bot=BotSettings(_env_file=None, shard_count=4, shard_ids=[2, 3]))
    bot = HexcoreBot(engine, config)
    assert bot.shard_count == 4 and bot.shard_ids == [2, 3]


async def test_close_cancels_background_tasks(harness):
    import asyncio

    task = harness.bot.background.spawn(asyncio.sleep(3600), name="forever")
    await harness.bot.close()
    assert task.cancelled()


# ------------------------------------------------------------------------------------------- meta-test


def _options(command: app_commands.Command) -> list[app_commands.Parameter]:
    return list(command.parameters)


async def test_every_command_is_described_and_names_do_not_clash(harness):
    """Walks every command of every loaded cog (B2's cogs too, once they exist)."""
    tree = harness.bot.tree
    names: list[str] = []
    commands = list(tree.walk_commands())
    assert commands, "no slash commands registered"
    for command in commands:
        names.append(command.qualified_name)
        assert command.description and command.description != "…", (
            f"/{command.qualified_name} has no description"
        )
        assert len(command.description) <= 100
        assert command.name == command.name.lower() and len(command.name) <= 32
        if isinstance(command, app_commands.Command):
            for param in _options(command):
                assert param.description and param.description != "…", (
                    f"/{command.qualified_name} option {param.name} has no description"
                )
            command.to_dict(tree)  # the payload Discord would validate builds
    assert len(names) == len(set(names)), f"command name clash: {names}"
    # every cog's app commands are in the tree (nothing shadowed by another cog)
    for cog in harness.bot.cogs.values():
        for command in cog.get_app_commands():
            assert tree.get_command(command.name) is command
    for command in harness.bot.walk_commands():  # prefix commands, if any cog adds some
        assert command.help or command.brief or command.description, f"{command.qualified_name} has no help"
