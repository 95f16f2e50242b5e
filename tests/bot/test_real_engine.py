"""The bot on the real engine: ``/explain`` answers with real citations, ``/rule`` quotes the rules.

The same fake Discord as the other bot tests (tests/bot/harness/), but ``LocalEngine`` on the embedded
default instead of the fake engine: real retrieval, real SmolLM2 with its expert adapters. One engine per
module; answers capped at 24 new tokens.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bot.client import HexcoreBot
from engine.local import LocalEngine
from hexcore.settings import BotSettings, EngineSettings, Settings
from tests.bot.harness import DEFERRED_MESSAGE, DiscordHarness, FakeClock

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

RELEASE = "2026-01-16"


@pytest.fixture(scope="module")
def real_settings(real_engine_settings) -> Settings:
    return real_engine_settings(
        engine=EngineSettings(max_new_tokens=24, queue_size=4, batch_size=4),
        bot=BotSettings(_env_file=None, cooldown_s=0, stream_edit_interval_s=1.0, streaming=True),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def real_engine(real_settings: Settings) -> AsyncIterator[LocalEngine]:
    engine = LocalEngine(real_settings)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


@pytest_asyncio.fixture(loop_scope="module")
async def harness(real_engine: LocalEngine, real_settings: Settings) -> AsyncIterator[DiscordHarness]:
    clock = FakeClock()
    bot = HexcoreBot(real_engine, real_settings, clock=clock)
    h = await DiscordHarness.start(bot, clock=clock)
    try:
        yield h
    finally:
        await h.close()


async def test_explain_answers_with_real_citations(harness: DiscordHarness, real_engine: LocalEngine) -> None:
    rec = await harness.slash("explain", question="How does trample work?", wait=False)
    await rec.wait(timeout=600)
    assert rec.callback_type == DEFERRED_MESSAGE  # acknowledged before the model ran
    message = rec.original
    assert message is not None and not message.loading and not message.ephemeral
    text = message.text()
    assert "Experts: explain" in text
    cited = re.findall(rf"CR (702\.19[a-z]?) \({RELEASE}\)", text)
    assert cited, text
    # The deciding rule leads the description (its answering sentence in bold); the others are fields.
    shown = "".join(
        [e.get("description", "").replace("**", "") for e in message.embeds]
        + [f["value"] for e in message.embeds for f in e.get("fields", [])]
    )
    assert real_engine.records[-1].experts == ["explain"]
    for number in cited:  # the cited rule, verbatim, as the real rules text prints it
        assert real_engine.rule(number)[0].text in shown
    assert harness.errors.records == []


async def test_rule_lookup_quotes_the_rule(harness: DiscordHarness, real_engine: LocalEngine) -> None:
    rec = await harness.slash("rule", number="702.19b")
    text = rec.original.text()
    rule, _, release = real_engine.rule("702.19b")
    assert "CR 702.19b" in text and rule.text in text and release in text
    assert harness.errors.records == []
