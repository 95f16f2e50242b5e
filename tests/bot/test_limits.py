"""Per-user lock and cooldown; the interaction token's lifetime."""

from __future__ import annotations

import datetime

import discord

from bot.limits import TOKEN_LIFETIME, UserGate, token_expires_at, token_usable
from tests.bot.harness import FakeClock


def test_one_question_at_a_time_per_user():
    gate = UserGate(cooldown_s=0, clock=FakeClock())
    assert gate.try_acquire(1) is None
    refusal = gate.try_acquire(1)
    assert refusal is not None and refusal.reason == "busy"
    assert gate.try_acquire(2) is None, "other users are independent"
    gate.release(1)
    assert gate.try_acquire(1) is None


def test_cooldown_counts_from_the_start_of_the_last_question():
    clock = FakeClock()
    gate = UserGate(cooldown_s=10, clock=clock)
    assert gate.try_acquire(1) is None
    gate.release(1)
    clock.advance(4)
    refusal = gate.try_acquire(1)
    assert refusal is not None and refusal.reason == "cooldown" and "6 s" in refusal.message
    clock.advance(6)
    assert gate.try_acquire(1) is None


def test_cooldown_state_is_pruned():
    clock = FakeClock()
    gate = UserGate(cooldown_s=5, clock=clock)
    for uid in range(100):
        gate.try_acquire(uid)
        gate.release(uid)
    clock.advance(6)
    gate.try_acquire(1000)
    assert len(gate._cooldowns._cache) == 1


class _Interaction:
    def __init__(self, created: datetime.datetime) -> None:
        self.id = discord.utils.time_snowflake(created)


def test_token_usable_until_shortly_before_fifteen_minutes():
    clock = FakeClock()
    interaction = _Interaction(clock.now())
    assert abs((token_expires_at(interaction) - clock.now()) - TOKEN_LIFETIME) < datetime.timedelta(seconds=1)
    assert token_usable(interaction, clock)
    clock.advance(14 * 60)
    assert token_usable(interaction, clock)
    clock.advance(40)
    assert not token_usable(interaction, clock), "30 s safety margin"
