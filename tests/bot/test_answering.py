"""The answer service on its own: admission, responding into a channel, records, thread sessions."""

from __future__ import annotations

import sqlite3

import discord
import pytest
from cachetools import LRUCache

from bot import limits, views
from bot.answering import AnswerRecord, AnswerService, Where
from bot.storage import FeedbackStore
from bot.streaming import ChannelSink
from engine.api import Expert
from engine.errors import EngineDead, EngineError, EngineOverloaded

QUESTION = "How does trample work when the blocker dies?"


def service(harness) -> AnswerService:
    return harness.bot.answers


def foreign_thread(harness, owner_id: int) -> discord.Thread:
    """A thread in the test channel that the bot did not open (unless ``owner_id`` is the bot's)."""
    data = harness._thread_payload(
        discord.utils.time_snowflake(discord.utils.utcnow()), harness.channel, "chat", owner_id=owner_id
    )
    harness.threads[int(data["id"])] = data
    harness.state.parse_thread_create(data)
    return harness.thread(int(data["id"]))


def test_the_bot_builds_one_service_for_every_cog(harness):
    assert isinstance(harness.bot.answers, AnswerService)
    assert harness.bot.answers.host is harness.bot


def test_admission_refuses_a_dead_or_full_engine_before_the_user_lock(harness, engine):
    answers = service(harness)
    engine.alive = False
    with answers.admission(1) as refusal:
        assert refusal == EngineDead.user_message
    engine.alive, engine.overloaded = True, True
    with answers.admission(1) as refusal:
        assert refusal == EngineOverloaded(engine.queue_capacity).user_message
    assert not harness.bot.gate.is_busy(1), "a refused question holds no slot"


def test_admission_holds_the_users_slot_until_the_answer_is_done(harness):
    answers = service(harness)
    with answers.admission(7) as refusal:
        assert refusal is None and harness.bot.gate.is_busy(7)
        with answers.admission(7) as second:
            assert second is not None and "already have a question in progress" in second
        with answers.admission(8) as other:
            assert other is None, "other users are independent"
    assert not harness.bot.gate.is_busy(7)


def test_request_caps_the_answer_length(harness):
    request = service(harness).request("q?", (Expert.TEACH,), "s1", 42)
    assert request.question == "q?" and request.experts == (Expert.TEACH,) and request.session_id == "s1"
    assert request.max_new_tokens <= limits.MAX_ANSWER_TOKENS
    assert request.user_id == "42"


async def test_respond_posts_remembers_and_stores_the_answer(harness, tmp_path):
    answers = service(harness)
    store = harness.bot.store = await FeedbackStore.open(tmp_path / "feedback.sqlite3")
    try:
        user = harness.members[1]
        outcome = await answers.respond(
            answers.request(QUESTION, None, "session-1", user.id),
            ChannelSink(harness.channel),
            Where(user.id, harness.guild.id, harness.channel.id, "ask"),
            title=QUESTION,
            thread_button=True,
        )
        await harness.settle()  # the answer is stored in the background
        assert outcome.status == "answered" and outcome.message is not None
        posted = harness.messages[outcome.message.id]
        assert "Trample lets the attacker" in posted.text()
        assert posted.custom_ids() == [views.THREAD_ID, views.HELPFUL_ID, views.UNHELPFUL_ID]
        record = answers.records[outcome.message.id]
        assert record == AnswerRecord(str(outcome.message.id), "session-1", QUESTION, user.id)
        assert await store.answers.exists(outcome.message.id)
        with sqlite3.connect(store.path) as conn:
            row = conn.execute(
                "SELECT guild_id, channel_id, user_id, command, question FROM answers"
            ).fetchone()
        assert row == (harness.guild.id, harness.channel.id, user.id, "ask", QUESTION)
        assert await store.answers.recent_latencies() != []
    finally:
        await store.close()


async def test_a_failed_answer_is_neither_remembered_nor_stored(harness, engine, tmp_path):
    answers = service(harness)
    engine.fail_with = EngineDead()
    store = harness.bot.store = await FeedbackStore.open(tmp_path / "feedback.sqlite3")
    try:
        outcome = await answers.respond(
            answers.request(QUESTION, None, None, 1),
            ChannelSink(harness.channel),
            Where(1, harness.guild.id, harness.channel.id, "ask"),
            title=QUESTION,
            thread_button=True,
        )
        await harness.settle()
        assert outcome.answer is None and len(answers.records) == 0
        assert (await store.stats())["answers"] == 0
    finally:
        await store.close()


async def test_forget_user_drops_only_that_users_records(harness):
    for user in (0, 1, 0):
        await harness.slash("ask", question=QUESTION, user=user)
    answers = service(harness)
    assert len(answers.records) == 3
    answers.forget_user(harness.members[0].id)
    assert [r.user_id for r in answers.records.values()] == [harness.members[1].id]


async def test_forgetting_a_user_keeps_the_others_recency(harness):
    answers = service(harness)
    answers.records = LRUCache(2)
    answers.records[1] = AnswerRecord("1", "1", "old question", user_id=10)
    answers.records[2] = AnswerRecord("2", "2", "newer question", user_id=20)
    assert answers.records[1].question == "old question"  # used again: now the most recent
    answers.forget_user(30)
    answers.records[3] = AnswerRecord("3", "3", "newest question", user_id=30)
    assert sorted(answers.records) == [1, 3]  # the least recently used (2) made room, not 1


async def test_sessions_of_threads_the_bot_opened(harness, engine):
    answers = service(harness)
    answer = await harness.slash("ask", question=QUESTION)
    await harness.click(answer.original, views.THREAD_ID)
    thread = harness.thread(answer.original.id)
    assert answers.session_for(thread) == engine.requests[0].session_id == str(thread.id)
    assert answers.session_for(foreign_thread(harness, harness.members[0].id)) is None


async def test_a_bot_thread_from_before_a_restart_continues_with_its_own_id(harness):
    answers = service(harness)
    thread = foreign_thread(harness, harness.bot.user.id)
    assert thread.id not in answers.sessions
    assert answers.session_for(thread) == str(thread.id)
    assert answers.sessions[thread.id] == str(thread.id), "registered from then on"


async def test_end_thread_ends_the_session_and_forgets_only_when_deleted(harness, engine):
    answers = service(harness)
    answers.register_thread(10, "s10")
    await answers.end_thread(10, forget=False)  # archived: still ours when it is reopened
    assert engine.ended_sessions == ["s10"] and answers.sessions[10] == "s10"
    await answers.end_thread(10, forget=True)
    assert engine.ended_sessions == ["s10", "s10"] and 10 not in answers.sessions
    await answers.end_thread(11, forget=True)  # not ours: nothing to end
    assert engine.ended_sessions == ["s10", "s10"]


async def test_an_engine_error_while_ending_a_session_is_only_logged(harness, engine, monkeypatch, caplog):
    async def failing(session_id: str) -> None:
        raise EngineError("worker gone")

    monkeypatch.setattr(engine, "end_session", failing)
    service(harness).register_thread(12, "s12")
    await service(harness).end_thread(12, forget=True)
    assert any("could not end session s12" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bot_settings", [{"cooldown_s": 30}], indirect=True)
async def test_a_follow_up_in_cooldown_is_refused_in_the_thread(harness, engine):
    answer = await harness.slash("ask", question=QUESTION)
    await harness.click(answer.original, views.THREAD_ID)
    thread = harness.thread(answer.original.id)
    await harness.message("And with deathtouch?", channel=thread)
    assert len(engine.requests) == 1, "the cooldown since the first question still runs"
    assert "Please wait 30 s" in harness.bot_messages(thread)[-1].content
