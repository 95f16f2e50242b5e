"""The harness behaves like Discord where the bot's correctness depends on it."""

from __future__ import annotations

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.bot.harness import DEFERRED_MESSAGE, EPHEMERAL, FakeClock, SentMessage


def add_command(harness, callback, name: str = "probe") -> None:
    command = app_commands.Command(name=name, description="harness probe", callback=callback)
    harness.bot.tree.add_command(command)


async def test_interaction_is_a_real_discord_interaction(harness):
    seen = {}

    async def probe(interaction: discord.Interaction, amount: int, who: discord.Member) -> None:
        seen.update(interaction=interaction, amount=amount, who=who)
        await interaction.response.send_message("ok")

    add_command(harness, probe)
    rec = await harness.slash("probe", amount=3, who=harness.members[1], user=2)
    interaction = seen["interaction"]
    assert isinstance(interaction, discord.Interaction) and interaction.command.name == "probe"
    assert interaction.user.id == harness.members[2].id and interaction.channel == harness.channel
    assert seen["amount"] == 3 and seen["who"].id == harness.members[1].id
    assert rec.original.content == "ok" and rec.kinds() == ["callback"]


async def test_option_typos_and_unknown_commands_raise(harness):
    with pytest.raises(TypeError, match="no option"):
        await harness.slash("ask", questoin="typo")
    with pytest.raises(LookupError):
        await harness.slash("no-such-command")


async def test_acknowledging_after_three_seconds_fails_like_discord(harness):
    async def slow(interaction: discord.Interaction) -> None:
        harness.clock.advance(3.5)  # a handler that blocked before responding
        await interaction.response.send_message("too late")

    add_command(harness, slow)
    rec = await harness.slash("probe")
    assert not rec.acknowledged and rec.messages() == []
    assert any("Unknown interaction" in m for m in harness.errors.messages())


async def test_a_second_acknowledgement_is_rejected(harness):
    caught = []

    async def twice(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        try:
            await interaction.response.send_message("again")
        except discord.InteractionResponded as exc:  # discord.py guards it locally
            caught.append(exc)
        try:  # and Discord refuses a second callback too
            interaction.response._response_type = None
            await interaction.response.send_message("again")
        except discord.HTTPException as exc:
            caught.append(exc)

    add_command(harness, twice)
    await harness.slash("probe")
    assert isinstance(caught[0], discord.InteractionResponded) and caught[1].code == 40060


async def test_first_followup_completes_the_deferred_message(harness):
    async def deferred(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.followup.send("done", ephemeral=True)  # ephemeral ignored: it completes the defer
        await interaction.followup.send("private", ephemeral=True)

    add_command(harness, deferred)
    rec = await harness.slash("probe")
    assert rec.callback_type == DEFERRED_MESSAGE
    assert rec.original.content == "done" and not rec.original.ephemeral and not rec.original.loading
    assert [m.content for m in rec.followups] == ["private"] and rec.followups[0].flags & EPHEMERAL


async def test_tokens_expire_after_fifteen_minutes(harness):
    errors = []

    async def late(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        harness.clock.advance(15 * 60)
        try:
            await interaction.edit_original_response(content="late")
        except discord.HTTPException as exc:
            errors.append(exc)

    add_command(harness, late)
    await harness.slash("probe")
    assert errors[0].status == 401 and errors[0].code == 50027


async def test_editing_a_deleted_message_raises_not_found(harness):
    errors = []

    async def edit(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("hello")
        message = await interaction.original_response()
        harness.delete_message(message.id)
        try:
            await interaction.edit_original_response(content="edited")
        except discord.NotFound as exc:
            errors.append(exc)
        sent = await interaction.channel.send("in channel")
        harness.delete_message(sent.id)
        try:
            await sent.edit(content="edited")
        except discord.NotFound as exc:
            errors.append(exc)

    add_command(harness, edit)
    await harness.slash("probe")
    assert [e.code for e in errors] == [10008, 10008]


async def test_buttons_dispatch_to_persistent_views(harness):
    clicks = []

    class Persistent(discord.ui.View):
        def __init__(self) -> None:
            super().__init__(timeout=None)

        @discord.ui.button(label="go", custom_id="probe:go")
        async def go(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
            clicks.append(interaction.user.id)
            await interaction.response.send_message("clicked", ephemeral=True)

    harness.bot.add_view(Persistent())

    async def show(interaction: discord.Interaction) -> None:
        view = Persistent()
        view.stop()  # rendered only: the registered persistent instance handles the click
        await interaction.response.send_message("press", view=view)

    add_command(harness, show)
    rec = await harness.slash("probe")
    click = await harness.click(rec.original, "probe:go", user=1)
    assert clicks == [harness.members[1].id] and click.original.ephemeral
    with pytest.raises(LookupError):
        await harness.click(rec.original, "probe:nope")


async def test_modal_round_trip(harness):
    answers = []

    class Why(discord.ui.Modal, title="Why?"):
        reason = discord.ui.TextInput(label="Reason", custom_id="probe:reason")

        async def on_submit(self, interaction: discord.Interaction) -> None:
            answers.append(self.reason.value)
            await interaction.response.send_message("thanks", ephemeral=True)

    async def ask_why(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(Why())

    add_command(harness, ask_why)
    shown = await harness.slash("probe")
    assert shown.modal["title"] == "Why?"
    submitted = await harness.submit_modal(shown, {"Reason": "wrong rule"})
    assert answers == ["wrong rule"] and submitted.original.content == "thanks"


async def test_threads_and_messages_in_them(harness):
    seen = []

    class Listener(commands.Cog):
        @commands.Cog.listener()
        async def on_message(self, message: discord.Message) -> None:
            if not message.author.bot:
                seen.append(message)

    await harness.bot.add_cog(Listener())
    starter = await harness.message("start")
    thread = await starter.create_thread(name="t")
    assert harness.thread(thread.id).parent == harness.channel
    posted = await thread.send("bot says hi")
    assert posted.channel.id == thread.id and harness.bot_messages(thread)[0].content == "bot says hi"
    await harness.message("user says hi", channel=thread)
    assert isinstance(seen[-1].channel, discord.Thread) and seen[-1].guild == harness.guild
    with pytest.raises(discord.HTTPException) as info:
        await starter.create_thread(name="again")
    assert info.value.code == 160004
    await harness.delete_thread(thread.id)
    with pytest.raises(discord.NotFound):
        await thread.send("gone")


async def test_reactions_reach_raw_and_cached_listeners(harness):
    raw, cached = [], []

    class Listener(commands.Cog):
        @commands.Cog.listener()
        async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
            raw.append((payload.message_id, str(payload.emoji), payload.user_id))

        @commands.Cog.listener()
        async def on_reaction_add(self, reaction: discord.Reaction, user: discord.User) -> None:
            cached.append(str(reaction.emoji))

    await harness.bot.add_cog(Listener())
    sent = await harness.channel.send("react to me")
    await harness.react(sent, "👍", user=1)
    assert raw == [(sent.id, "👍", harness.members[1].id)] and cached == ["👍"]
    # dpytest's own helper works too, thanks to the reaction shim
    import discord.ext.test as dpytest

    await dpytest.add_reaction(harness.members[2], sent, "👎")
    assert raw[-1][1:] == ("👎", harness.members[2].id)


async def test_log_capture_sees_unhandled_errors(harness):
    async def broken(interaction: discord.Interaction) -> None:
        raise RuntimeError("kaput")

    add_command(harness, broken)
    rec = await harness.slash("probe")
    assert any("kaput" in m for m in harness.errors.messages())
    assert "Something went wrong" in rec.ephemeral_text()


def test_fake_clock_moves_both_clocks():
    clock = FakeClock()
    mono, wall = clock.monotonic(), clock.now()
    clock.advance(90)
    assert clock.monotonic() - mono == 90
    assert (clock.now() - wall).total_seconds() >= 90


def test_sent_message_text_reads_embeds():
    message = SentMessage(1, 2)
    message.apply(
        {
            "content": "hi",
            "embeds": [{"title": "T", "description": "D", "fields": [{"name": "N", "value": "V"}]}],
        }
    )
    assert message.text() == "hi\nT\nD\nN\nV"
    message.apply({"content": "edited"})
    assert message.edits == 1 and message.content == "edited" and message.embeds


async def test_reactions_on_interaction_messages_and_removal(harness):
    events = []

    class Listener(commands.Cog):
        @commands.Cog.listener()
        async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
            events.append(("add", payload.message_id, str(payload.emoji)))

        @commands.Cog.listener()
        async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
            events.append(("remove", payload.message_id, str(payload.emoji)))

    await harness.bot.add_cog(Listener())
    rec = await harness.slash("rule", number="702.19b")
    await harness.react(rec.original, "👎", user=1)
    await harness.react(rec.original.id, "👎", user=1, remove=True)
    assert events == [("add", rec.original.id, "👎"), ("remove", rec.original.id, "👎")]
