"""Feedback end to end: reactions (dpytest) and answer buttons (real interactions) into a real SQLite store,
and ``/forgetme``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import discord
import pytest
from discord.ext.test import backend as back

from bot import views
from bot.client import HexcoreBot
from bot.cogs.feedback import ForgetButton, reaction_value
from bot.storage import FeedbackStore
from tests.bot.harness import DiscordHarness

QUESTION = "How does trample work when the blocker dies?"


@pytest.fixture
async def store(tmp_path: Path):
    s = await FeedbackStore.open(tmp_path / "feedback.sqlite3")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def fb(harness, store):
    """The conftest harness with a real feedback store."""
    harness.bot.store = store
    return harness


async def ask(h, user=0):
    rec = await h.slash("ask", question=QUESTION, user=user)
    assert rec.original is not None and not rec.original.ephemeral
    await h.settle()  # the answers cog stores answers in a background task
    return rec.original


def votes_of(votes):
    return {(v.user_id, v.value, v.source) for v in votes}


@pytest.mark.parametrize(
    ("emoji", "expected"),
    [
        ("👍", ("👍", 1)),
        ("👍🏽", ("👍", 1)),
        ("👎", ("👎", -1)),
        ("✅", ("✅", 1)),
        ("❌", ("❌", -1)),
        ("❤️", ("❤", 1)),
        ("🎉", None),
        (discord.PartialEmoji(name="pepe", id=123), None),
    ],
)
def test_reaction_values(emoji, expected):
    assert reaction_value(emoji) == expected


async def test_answers_are_stored(fb, store):
    answer = await ask(fb)
    assert await store.answers.exists(answer.id)
    assert await store.export_training_examples() == [], "no votes yet"
    assert (await store.stats())["answers"] == 1


async def test_thumbs_up_reaction_is_a_vote_and_removing_it_removes_the_vote(fb, store):
    answer = await ask(fb)
    member = fb.members[1]
    await fb.react(answer, "👍", user=1)
    assert votes_of(await store.votes.on_answer(answer.id)) == {(member.id, 1, "reaction:👍")}
    await fb.react(answer, "👍", user=1, remove=True)
    assert await store.votes.on_answer(answer.id) == []
    assert fb.errors.records == []


async def test_reactions_change_the_vote_and_skin_tones_count(fb, store):
    answer = await ask(fb)
    await fb.react(answer, "👍🏾", user=1)
    await fb.react(answer, "❌", user=1)
    await fb.react(answer, "✅", user=2)
    assert votes_of(await store.votes.on_answer(answer.id)) == {
        (fb.members[1].id, -1, "reaction:❌"),
        (fb.members[2].id, 1, "reaction:✅"),
    }
    await fb.react(answer, "👍🏾", user=1, remove=True)  # no longer what cast member 1's vote
    assert len(await store.votes.on_answer(answer.id)) == 2


async def test_buttons_and_reactions_share_one_vote_per_user(fb, store):
    answer = await ask(fb)
    uid = fb.members[1].id
    click = await fb.click(answer, views.HELPFUL_ID, user=1)
    assert click.original.ephemeral and "Thanks" in click.original.text()
    assert votes_of(await store.votes.on_answer(answer.id)) == {(uid, 1, "button")}
    await fb.react(answer, "👎", user=1)
    assert votes_of(await store.votes.on_answer(answer.id)) == {(uid, -1, "reaction:👎")}
    await fb.click(answer, views.HELPFUL_ID, user=1)
    await fb.react(answer, "👎", user=1, remove=True)  # the button vote since then stays
    assert votes_of(await store.votes.on_answer(answer.id)) == {(uid, 1, "button")}
    await fb.click(answer, views.UNHELPFUL_ID, user=2)
    assert await store.export_training_examples() == [], "one up, one down: no example"
    await fb.react(answer, "✅", user=0)
    (example,) = await store.export_training_examples()
    assert (example["score"], example["upvotes"], example["downvotes"]) == (1, 2, 1)


async def test_ignored_reactions(fb, store):
    answer = await ask(fb)
    # a bot message that is not an answer, and a user's own message
    notice = await fb.channel.send("Hexcore is restarting soon")
    said = await fb.message("what about [[not a card at all]]")
    await fb.react(notice, "👍", user=1)
    await fb.react(said, "👍", user=1)
    # unmapped and custom emoji on an answer
    await fb.react(answer, "🎉", user=1)
    # another bot, and the bot itself
    robot = back.make_user("Robot", "0042")
    robot.bot = True
    await fb.react(answer, "👍", user=back.make_member(robot, fb.guild))
    me = fb.guild.get_member(fb.bot.user.id)
    await fb.react(answer, "👍", user=me)
    assert (await store.stats())["votes"] == 0
    assert fb.errors.records == []


async def test_reactions_without_a_store_are_ignored(harness):
    answer = await ask(harness)
    await harness.react(answer, "👍", user=1)
    assert harness.errors.records == []


# ------------------------------------------------------------------------------------------ /forgetme


async def forgetme(h, user=0):
    rec = await h.slash("forgetme", user=user)
    assert rec.original.ephemeral
    return rec


async def test_forgetme_confirmed_deletes_exactly_that_users_data(fb, store):
    mine = await ask(fb, user=0)
    theirs = await ask(fb, user=1)
    await fb.click(theirs, views.HELPFUL_ID, user=0)
    await fb.react(mine, "👍", user=2)
    await fb.click(theirs, views.UNHELPFUL_ID, user=2)
    rec = await forgetme(fb)
    assert "1 answer(s)" in rec.original.text() and "1 vote(s)" in rec.original.text()
    confirm, cancel = rec.original.custom_ids()
    assert confirm.startswith("hexcore:forgetme:confirm:") and cancel.startswith("hexcore:forgetme:cancel:")
    done = await fb.click(rec.original, confirm)
    assert done.kinds() == ["callback"] and rec.original.components == []
    assert rec.original.content.startswith(
        "Done: deleted 1 answer(s), 1 vote(s) of yours, 1 vote(s) on your answers"
    )
    assert not await store.answers.exists(mine.id) and await store.answers.exists(theirs.id)
    assert votes_of(await store.votes.on_answer(theirs.id)) == {(fb.members[2].id, -1, "button")}
    assert await store.users.count(fb.members[0].id) == {"answers": 0, "votes": 0}
    assert mine.id not in fb.bot.answers.records, "in-memory copies are dropped too"
    assert fb.errors.records == []


async def test_forgetme_cancel_keeps_everything(fb, store):
    await ask(fb)
    rec = await forgetme(fb)
    await fb.click(rec.original, rec.original.custom_ids()[1])
    assert rec.original.content == "Cancelled: nothing was deleted."
    assert (await store.stats())["answers"] == 1


async def test_forgetme_confirmation_is_for_the_asker_only(fb, store):
    await ask(fb)
    rec = await forgetme(fb)
    other = await fb.click(rec.original, rec.original.custom_ids()[0], user=1)
    assert "Only the person who asked" in other.ephemeral_text()
    assert (await store.stats())["answers"] == 1


async def test_forgetme_confirmation_expires(fb, store):
    await ask(fb)
    rec = await forgetme(fb)
    fb.clock.advance(11 * 60)
    await fb.click(rec.original, rec.original.custom_ids()[0])
    assert "expired" in rec.original.content
    assert (await store.stats())["answers"] == 1


async def test_forgetme_buttons_hold_no_state_in_memory(fb, store):
    """The confirmation's buttons carry user and time in their custom id: after the cog is reloaded (as after
    a restart) the click still works, and no view object was kept for the message."""
    await ask(fb)
    rec = await forgetme(fb)
    stored = [i for v in fb.bot.persistent_views for i in v.children]
    assert not any(isinstance(i, ForgetButton) for i in stored), "no view object kept per confirmation"
    await fb.bot.reload_extension("bot.cogs.feedback")
    await fb.click(rec.original, rec.original.custom_ids()[0])
    assert rec.original.content.startswith("Done: deleted 1 answer(s)")
    await fb.bot.unload_extension("bot.cogs.feedback")
    again = await forgetme_raw(fb)
    assert again is None, "unloaded: /forgetme is gone with its cog"


async def forgetme_raw(h):
    try:
        return await h.slash("forgetme")
    except LookupError:
        return None


async def test_forgetme_with_nothing_stored(fb):
    rec = await forgetme(fb, user=2)
    assert rec.original.text() == "Nothing is stored about you: no questions, no votes."
    assert rec.original.components == []


async def test_forgetme_without_a_store(harness):
    rec = await forgetme(harness)
    assert "nothing to delete" in rec.original.text()


# -------------------------------------------------------------------------------------- small load run


async def test_concurrent_answers_and_votes_lose_no_feedback_row(engine, bot_config, clock, store):
    """A small version of bench/bench_bot_load.py: 24 users ask at once, every answer gets a vote."""
    engine.queue_capacity = 100
    engine.delay_s = 0.01
    h = await DiscordHarness.start(
        HexcoreBot(engine, bot_config, clock=clock, store=store), clock=clock, members=25
    )
    try:
        recs = await asyncio.gather(*(h.slash("ask", question=f"{QUESTION} #{i}", user=i) for i in range(24)))
        assert all(r.deferred and r.replies[0].kind == "callback" for r in recs)
        await h.settle()
        answers = [r.original for r in recs]
        assert all("Trample lets the attacker" in a.text() for a in answers)
        voters = [(a, (i + 1) % 25) for i, a in enumerate(answers)]
        await asyncio.gather(
            *(
                h.click(a, views.HELPFUL_ID if i % 2 else views.UNHELPFUL_ID, user=u)
                for i, (a, u) in enumerate(voters)
            )
        )
        await asyncio.gather(*(h.react(a, "✅", user=(u + 1) % 25) for a, u in voters[:10]))
        stats = await store.stats()
        assert stats["answers"] == 24 and stats["votes"] == 24 + 10
        assert h.errors.records == []
    finally:
        await h.close()
