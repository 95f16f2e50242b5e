"""Follow-up threads: opened from an answer, continuing its engine session, ended when archived or deleted."""

from __future__ import annotations

import discord

from bot import views
from bot.answering import INTRO

QUESTION = "How does trample work when the blocker dies?"


async def open_thread(harness) -> tuple:
    answer = await harness.slash("ask", question=QUESTION)
    click = await harness.click(answer.original, views.THREAD_ID)
    thread = harness.thread(answer.original.id)
    return answer, click, thread


async def test_open_thread_button_creates_a_thread_on_the_answer(harness, engine):
    answer, click, thread = await open_thread(harness)
    assert isinstance(thread, discord.Thread) and thread.parent_id == harness.channel.id
    assert thread.name == QUESTION and thread.owner_id == harness.bot.user.id
    assert click.ephemeral_text() == f"Thread opened: <#{thread.id}>"
    assert [m.content for m in harness.bot_messages(thread)] == [INTRO]
    assert harness.errors.records == []


async def test_follow_up_in_the_thread_reuses_the_session(harness, engine):
    answer, _, thread = await open_thread(harness)
    await harness.message("And if it has deathtouch?", channel=thread)
    assert len(engine.requests) == 2
    first, follow_up = engine.requests
    assert follow_up.session_id == first.session_id == str(thread.id)
    assert follow_up.question == "And if it has deathtouch?" and follow_up.experts is None
    replies = harness.bot_messages(thread)[1:]
    assert len(replies) == 1 and "Trample lets the attacker" in replies[0].text()
    assert replies[0].allowed_mentions == {"parse": []}
    # in a thread: feedback buttons, but no "open thread" button
    assert replies[0].custom_ids() == [views.HELPFUL_ID, views.UNHELPFUL_ID]


async def test_follow_up_streams_into_one_message(harness, engine):
    _, _, thread = await open_thread(harness)
    engine.answer_text = " ".join(f"w{i}" for i in range(12))
    engine.token_step_s = 1.0
    await harness.message("And then?", channel=thread)
    reply = harness.bot_messages(thread)[-1]
    assert reply.edits >= 5, "streamed by editing the placeholder"
    assert "w11" in reply.text()


async def test_slash_command_inside_the_thread_continues_its_session(harness, engine):
    _, _, thread = await open_thread(harness)
    rec = await harness.slash("explain", question="What is lethal damage?", channel=thread)
    assert engine.requests[-1].session_id == str(thread.id)
    assert views.THREAD_ID not in rec.original.custom_ids()


async def test_archiving_the_thread_ends_the_session(harness, engine):
    _, _, thread = await open_thread(harness)
    await harness.archive_thread(thread.id)
    assert engine.ended_sessions == [str(thread.id)]


async def test_deleting_the_thread_ends_the_session(harness, engine):
    _, _, thread = await open_thread(harness)
    await harness.delete_thread(thread.id)
    assert engine.ended_sessions == [str(thread.id)]
    assert harness.bot.answers.sessions == {}


async def test_second_click_points_to_the_existing_thread(harness):
    answer, _, thread = await open_thread(harness)
    again = await harness.click(answer.original, views.THREAD_ID, user=1)
    assert again.ephemeral_text() == f"This answer already has a thread: <#{thread.id}>"
    assert len(harness.threads) == 1


async def test_messages_in_other_threads_are_ignored(harness, engine):
    data = harness._thread_payload(
        discord.utils.time_snowflake(discord.utils.utcnow()),
        harness.channel,
        "chat",
        owner_id=harness.members[0].id,
    )
    harness.threads[int(data["id"])] = data
    harness.state.parse_thread_create(data)
    await harness.message("What is trample?", channel=harness.thread(int(data["id"])))
    assert engine.requests == []


async def test_follow_up_respects_the_user_lock(harness, engine, bot_config):
    _, _, thread = await open_thread(harness)
    harness.bot.gate.try_acquire(harness.members[0].id)  # a question of theirs is still running
    message = await harness.message("Another one?", channel=thread)
    reply = harness.bot_messages(thread)[-1]
    assert "already have a question in progress" in reply.content
    assert len(engine.requests) == 1
    assert message.id  # the refusal replied to the user's message


async def test_thread_deleted_mid_stream_aborts_the_follow_up(harness, engine):
    _, _, thread = await open_thread(harness)
    engine.answer_text = " ".join(f"w{i}" for i in range(30))
    engine.token_step_s = 1.0

    def delete_at_five(i: int) -> None:
        if i == 5:
            harness.deleted_channels.add(thread.id)

    engine.on_token = delete_at_five
    await harness.message("And then?", channel=thread)
    assert engine.cancelled == [engine.requests[-1]]
    assert harness.errors.records == []


async def test_without_the_threads_cog_no_thread_is_opened(harness):
    await harness.bot.remove_cog("Threads")  # as when the extension failed to load
    answer = await harness.slash("ask", question=QUESTION)
    click = await harness.click(answer.original, views.THREAD_ID)
    assert click.ephemeral_text() == "Follow-up threads are not available right now."
    assert harness.guild.get_thread(answer.original.id) is None
