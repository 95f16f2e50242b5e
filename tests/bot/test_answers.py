"""The answer commands end to end: real bot, real discord.py interactions, fake Discord, fake engine."""

from __future__ import annotations

import asyncio

import pytest
from cachetools import LRUCache

from bot import formatting, views
from engine.api import Expert
from engine.errors import AdapterError, EngineDead, EngineOverloaded, GenerationError, InvalidRequest
from tests.bot.harness import CHANNEL_MESSAGE, DEFERRED_MESSAGE, SentMessage

QUESTION = "How does trample work when the blocker dies?"


async def test_ask_defers_first_then_answers_by_edit(harness, engine):
    rec = await harness.slash("ask", question=QUESTION)
    assert rec.replies[0].kind == "callback" and rec.callback_type == DEFERRED_MESSAGE
    assert rec.replies[-1].kind == "edit"
    answer = rec.original
    assert not answer.loading and not answer.ephemeral
    assert engine.requests[0].question == QUESTION and engine.requests[0].experts is None
    # the answer, the cited rule verbatim with its release, the experts, the buttons
    text = answer.text()
    assert "Trample lets the attacker" in text
    rule = engine.data.rules.rules["702.19b"]
    assert rule.text in answer.embeds[0]["description"].replace("**", "")  # the deciding rule leads
    assert "CR 702.19b (2026-01-16)" in text and "Experts: reason" in text
    assert answer.custom_ids() == [views.THREAD_ID, views.HELPFUL_ID, views.UNHELPFUL_ID]
    assert harness.errors.records == []


@pytest.mark.parametrize(
    ("command", "expert"),
    [
        ("explain", Expert.EXPLAIN),
        ("teach", Expert.TEACH),
        ("predict", Expert.PREDICT),
        ("review", Expert.RETROSPECT),
    ],
)
async def test_fixed_expert_commands(harness, engine, command, expert):
    rec = await harness.slash(command, question=QUESTION)
    assert engine.requests[-1].experts == (expert,)
    assert f"Experts: {expert.value}" in rec.original.text()


async def test_session_id_is_the_answer_message_id(harness, engine):
    rec = await harness.slash("ask", question=QUESTION)
    assert engine.requests[0].session_id == str(rec.original.id)
    assert engine.requests[0].user_id == str(harness.members[0].id)
    assert engine.requests[0].max_new_tokens == min(harness.bot.settings.engine.max_new_tokens, 1024)


async def test_slow_engine_is_acknowledged_before_it_answers(harness, engine):
    engine.gate = asyncio.Event()  # the engine does not produce anything until released
    rec = await harness.slash("ask", question=QUESTION, wait=False)
    for _ in range(50):
        await asyncio.sleep(0)
        if rec.acknowledged and engine.requests:
            break
    assert rec.deferred and rec.original.loading, "deferred while the engine is still busy"
    assert engine.completed == []
    harness.clock.advance(30)  # far past the 3 s acknowledgement deadline: the defer already counted
    engine.gate.set()
    await rec.wait()
    assert "Trample lets the attacker" in rec.original.text()
    assert harness.errors.records == []


async def test_overload_gets_an_immediate_private_busy_reply(harness, engine):
    engine.overloaded = True
    rec = await harness.slash("ask", question=QUESTION)
    assert rec.callback_type == CHANNEL_MESSAGE and rec.original.ephemeral
    assert "busy" in rec.original.text() and f"{engine.queue_capacity} questions ahead" in rec.original.text()
    assert engine.requests == []


async def test_overload_after_defer_replaces_the_placeholder_privately(harness, engine):
    engine.fail_with = EngineOverloaded(7)
    rec = await harness.slash("ask", question=QUESTION)
    assert rec.deferred
    assert rec.original.deleted, "the public 'thinking' placeholder is removed"
    assert "7 questions ahead" in rec.ephemeral_text()
    assert rec.public_messages() == []


@pytest.mark.parametrize(
    "error",
    [
        EngineDead(),
        GenerationError("cuda oom"),
        AdapterError("teach", "corrupt"),
        InvalidRequest("Question too long."),
    ],
)
async def test_engine_errors_become_their_private_message(harness, engine, error):
    engine.fail_with = error
    rec = await harness.slash("teach", question=QUESTION)
    assert rec.ephemeral_text() == error.user_message
    assert rec.public_messages() == []
    assert harness.errors.records == []


async def test_error_mid_stream_is_reported_privately(harness, engine):
    engine.fail_with, engine.fail_after_tokens = GenerationError("boom"), 3
    rec = await harness.slash("ask", question=QUESTION)
    assert rec.ephemeral_text() == GenerationError.user_message
    assert rec.public_messages() == []


async def test_dead_engine_refused_before_deferring(harness, engine):
    engine.alive = False
    rec = await harness.slash("ask", question=QUESTION)
    assert rec.callback_type == CHANNEL_MESSAGE and rec.original.text() == EngineDead.user_message
    assert engine.requests == []


async def test_one_generation_at_a_time_per_user(harness, engine):
    engine.gate = asyncio.Event()
    first = await harness.slash("ask", question=QUESTION, wait=False)
    while not engine.requests:
        await asyncio.sleep(0)
    second = await harness.slash("explain", question="What is ward?")
    assert second.original.ephemeral and "already have a question in progress" in second.original.text()
    other = await harness.slash(
        "explain", question="What is ward?", user=1, wait=False
    )  # another user is fine
    while len(engine.requests) < 2:
        await asyncio.sleep(0)
    engine.gate.set()
    await first.wait()
    await other.wait()
    assert len(engine.completed) == 2
    third = await harness.slash("ask", question=QUESTION)  # lock released after the answer
    assert not third.original.ephemeral


@pytest.mark.parametrize("bot_settings", [{"cooldown_s": 30}], indirect=True)
async def test_cooldown_between_questions(harness, engine):
    await harness.slash("ask", question=QUESTION)
    rec = await harness.slash("ask", question=QUESTION)
    assert rec.original.ephemeral and "Please wait 30 s" in rec.original.text()
    harness.clock.advance(31)
    rec = await harness.slash("ask", question=QUESTION)
    assert not rec.original.ephemeral
    assert len(engine.requests) == 2


async def test_streaming_edits_are_throttled_and_end_with_a_final_edit(harness, engine, bot_settings):
    engine.answer_text = " ".join(f"word{i}" for i in range(40))
    engine.token_step_s = 0.25  # 40 tokens over 10 simulated seconds
    rec = await harness.slash("ask", question=QUESTION)
    edits = [r for r in rec.replies if r.kind == "edit"]
    previews, final = edits[:-1], edits[-1]
    assert 8 <= len(previews) <= 11, "about one edit per second of generation"
    assert all(formatting.CURSOR in p.payload["content"] for p in previews)
    assert "embeds" in final.payload and "word39" in final.payload["embeds"][0]["description"]
    assert "word39" in rec.original.text() and formatting.CURSOR not in rec.original.text()


@pytest.mark.parametrize("bot_settings", [{"streaming": False}], indirect=True)
async def test_non_streaming_mode_edits_once(harness, engine):
    engine.token_step_s = 0.5
    rec = await harness.slash("ask", question=QUESTION)
    assert rec.kinds().count("edit") == 1
    assert "Trample lets the attacker" in rec.original.text()


async def test_long_answer_split_without_breaking_code_fences(harness, engine):
    code = "\n".join(f"step {i}: put the trigger on the stack" for i in range(200))
    engine.answer_text = "Order of triggers:\n```text\n" + code + "\n```\nThat is all." + " filler" * 600
    rec = await harness.slash("ask", question=QUESTION)
    messages = rec.public_messages()
    descriptions = [e["description"] for m in messages for e in m.embeds if "description" in e]
    assert len(descriptions) >= 3
    for d in descriptions:
        assert len(d) <= 4096
        assert d.count("```") % 2 == 0, "every part renders its code block closed"
    for m in messages:
        assert sum(len(e.get("title", "")) + len(e.get("description", "")) for e in m.embeds) <= 6000
    assert formatting.CONTINUED in messages[1].embeds[0]["title"]
    assert messages[0].embeds[-1]["author"]["name"] == "continued below ↓"
    assert "step 199" in "".join(descriptions) and "That is all." in "".join(descriptions)
    assert messages[0].custom_ids(), "buttons ride on the first message"


async def test_model_written_mentions_are_inert(harness, engine):
    engine.answer_text = "@everyone look: <@&123456789012345678> and @here too"
    rec = await harness.slash("ask", question=QUESTION)
    for reply in rec.replies:
        if reply.payload and reply.kind in ("edit", "followup"):
            assert reply.payload["allowed_mentions"] == {"parse": []}
            shown = reply.payload.get("content") or "".join(
                e.get("description", "") for e in reply.payload["embeds"]
            )
            assert "@everyone" not in shown and "@here" not in shown and "<@&1" not in shown
    assert "@\u200beveryone" in rec.original.text()


async def test_answer_deleted_mid_stream_aborts_the_request(harness, engine):
    engine.answer_text = " ".join(f"w{i}" for i in range(50))
    engine.token_step_s = 1.0  # one streaming edit per token
    rec = await harness.slash("ask", question=QUESTION, wait=False)
    engine.on_token = lambda i: harness.delete_message(rec.original.id) if i == 5 else None
    await rec.wait()
    assert engine.cancelled == engine.requests and engine.completed == []
    assert harness.errors.records == [], "the NotFound is expected and swallowed"
    assert rec.ephemeral_text() == "" and rec.messages() == []


@pytest.mark.parametrize("bot_settings", [{"streaming": False}], indirect=True)
async def test_not_found_on_the_final_edit_is_swallowed(harness, engine):
    engine.gate = asyncio.Event()
    rec = await harness.slash("ask", question=QUESTION, wait=False)
    while not engine.requests:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    harness.delete_message(rec.original.id)
    engine.gate.set()
    await rec.wait()
    assert engine.completed == engine.requests, "the answer was generated"
    assert "edit" not in rec.kinds() and "followup" not in rec.kinds(), "the final edit hit NotFound"
    assert rec.messages() == []
    assert harness.errors.records == []


async def test_token_expiry_falls_back_to_a_channel_message(harness, engine):
    engine.gate = asyncio.Event()
    rec = await harness.slash("ask", question=QUESTION, wait=False)
    while not engine.requests:
        await asyncio.sleep(0)
    harness.clock.advance(14 * 60 + 45)  # 15 s before the interaction token dies
    engine.gate.set()
    await rec.wait()
    assert rec.original.loading, "nothing more was sent through the dying token"
    posted = [m for m in harness.bot_messages(harness.channel) if m.interaction_id is None]
    assert len(posted) == 1
    assert "Trample lets the attacker" in posted[0].text() and posted[0].allowed_mentions == {"parse": []}
    assert f"<@{harness.members[0].id}>" in posted[0].content
    assert posted[0].custom_ids() == [views.THREAD_ID, views.HELPFUL_ID, views.UNHELPFUL_ID]
    assert harness.errors.records == []


@pytest.mark.parametrize("bot_settings", [{"answer_timeout_s": 0.05}], indirect=True)
async def test_wall_time_cap_aborts_the_request(harness, engine):
    engine.gate = asyncio.Event()  # never released
    rec = await harness.slash("ask", question=QUESTION)
    assert engine.cancelled == engine.requests
    assert "took too long" in rec.ephemeral_text()


async def test_card_option_is_resolved_and_cited(harness, engine):
    rec = await harness.slash("ask", question="Can I respond?", card="ponder")
    assert engine.requests[0].question.endswith("Card: Ponder")
    assert "Look at the top three cards of your library" in rec.original.text()


async def test_unknown_card_option_suggests_names(harness, engine):
    rec = await harness.slash("ask", question="Can I respond?", card="Tarmogoif")
    assert rec.original.ephemeral and "Did you mean: Tarmogoyf?" in rec.original.text()
    assert engine.requests == []


async def test_card_option_autocomplete(harness):
    choices = await harness.autocomplete("ask", "card", question="x", card="jace")
    names = [c["name"] for c in choices]
    assert "Jace, the Mind Sculptor" in names and all("jace" in n.lower() for n in names)


class Recorder:
    """One repository of a fake store: ``record(...)`` remembers its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def record(self, *args, **kwargs) -> None:
        self.calls.append(args)


class RecordingStore:
    """Stands in for FeedbackStore's ``answers.record`` and ``votes.record``."""

    def __init__(self) -> None:
        self.answers = Recorder()
        self.votes = Recorder()


async def test_answers_and_votes_are_stored(harness, engine, tmp_path):
    from bot.storage import FeedbackStore

    store = harness.bot.store = await FeedbackStore.open(tmp_path / "feedback.sqlite3")
    try:
        rec = await harness.slash("explain", question=QUESTION)
        await harness.settle()  # answers are stored in the background
        answer_id = str(rec.original.id)
        assert await store.answers.exists(answer_id)
        vote = await harness.click(rec.original, views.UNHELPFUL_ID, user=1)
        assert vote.original.ephemeral
        assert [(v.user_id, v.value, v.source) for v in await store.votes.on_answer(answer_id)] == [
            (harness.members[1].id, -1, "button")
        ]
        await harness.click(rec.original, views.HELPFUL_ID, user=1)  # a changed vote replaces the old one
        await harness.click(rec.original, views.HELPFUL_ID, user=2)
        assert sorted(v.value for v in await store.votes.on_answer(answer_id)) == [1, 1]
        [row] = await store.export_training_examples()
        assert row["question"] == QUESTION and row["experts"] == ["explain"]
        assert row["citations"] == ["CR 702.19b (2026-01-16)"] and row["answer"].startswith("Trample")
        assert row["score"] == 2
        assert (await store.answers.recent_latencies()) != []
    finally:
        await store.close()


async def test_votes_without_a_store_are_acknowledged(harness):
    rec = await harness.slash("ask", question=QUESTION)
    vote = await harness.click(rec.original, views.HELPFUL_ID)
    assert vote.original.ephemeral and "Thanks" in vote.original.text()
    assert harness.errors.records == []


async def test_lookups_are_answered_while_an_answer_is_generating(harness, engine):
    """The answer path never blocks the event loop: other interactions proceed meanwhile."""
    engine.gate = asyncio.Event()
    pending = await harness.slash("ask", question=QUESTION, wait=False)
    while not engine.requests:
        await asyncio.sleep(0)
    lookup = await harness.slash("rule", number="702.19b", user=1)
    assert lookup.original.embeds[0]["title"] == "CR 702.19b"
    assert not pending.tasks[0].done()
    engine.gate.set()
    await pending.wait()


async def test_buttons_work_on_answers_posted_before_a_restart(harness):
    """A fresh bot has never seen the message: the persistent view registered in setup_hook answers."""
    store = harness.bot.store = RecordingStore()
    old = SentMessage(id=harness._snowflake(), channel_id=harness.channel.id)
    old.apply({"content": "", "components": views.AnswerView.rendered().to_components()})
    harness.messages[old.id] = old
    rec = await harness.click(old, views.HELPFUL_ID)
    assert store.votes.calls == [(str(old.id), harness.members[0].id, 1, "button")]
    assert rec.original.ephemeral and harness.errors.records == []


async def test_remembered_answers_are_bounded(harness):
    harness.bot.answers.records = LRUCache(2)
    for _ in range(3):
        await harness.slash("ask", question=QUESTION)
    assert len(harness.bot.answers.records) == 2


async def test_a_failing_store_does_not_break_answering(harness, caplog):
    class BrokenAnswers(Recorder):
        async def record(self, *args, **kwargs) -> None:
            raise OSError("database is locked")

    store = harness.bot.store = RecordingStore()
    store.answers = BrokenAnswers()
    rec = await harness.slash("ask", question=QUESTION)
    await harness.settle()
    assert "Trample lets the attacker" in rec.original.text()
    assert any("database is locked" in m for m in harness.errors.messages()), "logged, not silent"
