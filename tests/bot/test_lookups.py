"""/rule, /card and [[card]] lookups against the real rules release and card fixtures."""

from __future__ import annotations

import logging

from bot import limits
from bot.cogs.lookups import card_references
from tests.bot.harness import CHANNEL_MESSAGE


def fields_text(message) -> str:
    return "\n".join(f["value"] for e in message.embeds for f in e.get("fields", []))


async def test_rule_shows_the_rule_its_subrules_and_release(harness, engine):
    rec = await harness.slash("rule", number="702.19")
    assert rec.callback_type == CHANNEL_MESSAGE, "lookups answer at once, no defer"
    message = rec.original
    rules = engine.data.rules.rules
    assert message.embeds[0]["title"] == "CR 702.19" and message.embeds[0]["description"] == "Trample"
    subrules = fields_text(message)
    for number in ("702.19a", "702.19b", "702.19g"):
        assert rules[number].text in subrules
    assert "Example: A 2/2 creature that can block an additional creature" in subrules
    assert "Comprehensive Rules, effective 2026-01-16" in message.text()
    assert not message.ephemeral


async def test_rule_text_is_verbatim_even_with_markdown_characters(harness, engine):
    number = next(n for n, r in engine.data.rules.rules.items() if "____" in r.text)
    rec = await harness.slash("rule", number=number)
    shown = rec.original.embeds[0]["description"]
    assert shown.replace("\\", "") == engine.data.rules.rules[number].full_text().replace("\\", "")
    assert "\\_" in shown, "underscores escaped so Discord does not turn them into italics"


async def test_long_rule_is_split_within_discord_limits(harness):
    rec = await harness.slash("rule", number="608.2")  # 14 long sub-rules, ~9,600 characters
    messages = rec.messages()
    for message in messages:
        assert (
            sum(len(f["value"]) + len(f["name"]) for e in message.embeds for f in e.get("fields", [])) <= 6000
        )
        assert all(len(e.get("fields", [])) <= 25 for e in message.embeds)
        assert all(len(f["value"]) <= 1024 for e in message.embeds for f in e.get("fields", []))
    assert len(messages) > 1, "continued in followups"
    assert "608.2n" in messages[-1].text()


async def test_unknown_rule_suggests_the_nearest_numbers(harness):
    rec = await harness.slash("rule", number="702.19z")
    assert rec.original.ephemeral
    assert "no rule 702.19z" in rec.original.text() and "702.19g" in rec.original.text()


async def test_card_shows_every_face(harness):
    rec = await harness.slash("card", name="Fire // Ice")
    text = rec.original.text()
    assert "Fire {1}{R}" in text and "Ice {1}{U}" in text
    assert "Tap target permanent." in text


async def test_unknown_card_offers_did_you_mean(harness):
    rec = await harness.slash("card", name="Tarmogoif")
    assert rec.original.ephemeral and "Did you mean: Tarmogoyf?" in rec.original.text()


async def test_rule_and_card_autocomplete(harness):
    rules = await harness.autocomplete("rule", "number", number="702.19")
    assert [c["value"] for c in rules][:3] == ["702.19", "702.19a", "702.19b"]
    cards = await harness.autocomplete("card", "name", name="tarm")
    assert cards == [{"name": "Tarmogoyf", "value": "Tarmogoyf"}]
    assert len(await harness.autocomplete("card", "name")) <= limits.CHOICES_LIMIT


async def test_card_references_in_a_message(harness):
    await harness.message("Does [[Ponder]] work with [[tarmogoyf]] and [[No Such Card]]?")
    [reply] = harness.bot_messages(harness.channel)
    assert [e["title"] for e in reply.embeds] == ["Ponder", "Tarmogoyf"]
    assert "No card named “No Such Card”" in reply.content
    assert reply.allowed_mentions["parse"] == []


async def test_card_references_are_capped(harness):
    names = ["Ponder", "Tarmogoyf", "Disenchant", "Consign", "Confiscate", "Shahrazad"]
    await harness.message(" ".join(f"[[{n}]]" for n in names))
    [reply] = harness.bot_messages(harness.channel)
    assert len(reply.embeds) == limits.MAX_CARDS_PER_MESSAGE
    assert f"first {limits.MAX_CARDS_PER_MESSAGE} cards of 6" in reply.content


async def test_messages_without_references_and_bot_messages_are_ignored(harness):
    await harness.message("just chatting about [Ponder] and [[ ]]")
    assert harness.bot_messages() == []


def test_card_references_parsing():
    assert card_references("[[Fire // Ice]] [[fire //  ice]] [[Ponder]]") == ["Fire // Ice", "Ponder"]
    assert card_references("[[a\nb]] [[]]") == []


async def test_forbidden_is_not_retried(harness, caplog):
    caplog.set_level(logging.INFO, logger="bot")
    harness.set_permissions(harness.channel, harness.guild.me, send_messages=False)
    await harness.message("[[Ponder]]")
    assert harness.send_attempts == [harness.channel.id], "one attempt, no retry"
    assert harness.bot_messages() == [] and harness.errors.records == []
    assert "no permission" in caplog.text
