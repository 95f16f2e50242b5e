"""Bot test fixtures: real rules and card data in a fake engine, a real bot around a fake Discord."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.client import HexcoreBot
from hexcore.settings import BotSettings, Settings
from tests.bot.fake_engine import FakeData, FakeEngine, load_fake_data
from tests.bot.harness import DiscordHarness, FakeClock


@pytest.fixture(scope="session")
def fake_data(data_dir: Path) -> FakeData:
    return load_fake_data(data_dir)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(fake_data: FakeData, clock: FakeClock) -> FakeEngine:
    return FakeEngine(fake_data, clock=clock)


@pytest.fixture
def bot_settings(request: pytest.FixtureRequest) -> BotSettings:
    """No cooldown unless a test sets one (``indirect`` parametrization); env files ignored."""
    values = {"cooldown_s": 0, "stream_edit_interval_s": 1.0, "streaming": True}
    values.update(getattr(request, "param", {}))
    return BotSettings(_env_file=None, **values)


@pytest.fixture
def bot_config(settings: Settings, bot_settings: BotSettings) -> Settings:
    return Settings(paths=settings.paths, bot=bot_settings)


@pytest.fixture
async def harness(
    engine: FakeEngine, bot_config: Settings, clock: FakeClock
) -> AsyncIterator[DiscordHarness]:
    bot = HexcoreBot(engine, bot_config, clock=clock)
    h = await DiscordHarness.start(bot, clock=clock)
    try:
        yield h
    finally:
        await h.close()
