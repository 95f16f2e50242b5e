"""Every slash command (and every autocomplete) fed hostile option values through the real-interaction
harness: each interaction is acknowledged, nothing is logged as an error (an unhandled exception in a command
lands there), every message fits Discord's limits, and none can ping anyone.

Values are drawn from the options' own schema (types, lengths, choices), as Discord enforces it client-side,
by a seeded generator (hypothesis does not drive async tests): mentions, code fences, markdown, zero-width
and right-to-left characters, emoji, rule-number look-alikes, whitespace, and lengths at both limits.
"""

from __future__ import annotations

import os
import random

import discord

from tests.bot.harness import DiscordHarness
from tests.reliability import CASES

PER_COMMAND = int(os.environ.get("HEXCORE_FUZZ_EXAMPLES", "12")) * 2
HOSTILE = [
    "@everyone",
    "@here <@&123> <@1>",
    "```",
    "```py\nprint(1)\n",
    "**__~~||",
    "\u200b",
    "\u202e702.19b",
    "🂡🃏",
    "702.19b",
    "1" * 32,
    "[[Ponder]] [[",
    " ",
    "\t",
    "\\",
    "%s %d {0}",
    "'; DROP TABLE feedback; --",
    "a\nb\r\nc",
    "ŧøķēñ",
]


def _text(rng: random.Random, low: int, high: int) -> str:
    """A string of length low..high built from hostile pieces and random code points."""
    target = rng.choice([low, high, rng.randint(low, high)])
    out = ""
    while len(out) < target:
        if rng.random() < 0.6:
            out += rng.choice(HOSTILE)
        else:
            out += chr(
                rng.choice(
                    [rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x1F300, 0x1F6FF)]
                )
            )
    out = out[:target]
    return out if out.strip() or low == 0 else "x" * max(low, 1)


def _value(rng: random.Random, option: dict) -> object:
    if option.get("choices"):
        return rng.choice(option["choices"])["value"]
    kind = option["type"]
    if kind == 3:  # string
        return _text(rng, option.get("min_length", 0), option.get("max_length", 200))
    if kind == 4:  # integer
        return rng.choice([0, -1, 1, 2**53, rng.randint(-(10**6), 10**6)])
    if kind == 10:  # number
        return rng.choice([0.0, -1.5, 1e300, rng.uniform(-1e6, 1e6)])
    if kind == 5:  # boolean
        return rng.random() < 0.5
    return None  # users, channels: not fuzzed here


def _commands(h: DiscordHarness) -> list[tuple[str, list[dict]]]:
    out = []
    for command in h.bot.tree.get_commands():
        schema = command.to_dict(h.bot.tree)
        options = [o for o in schema.get("options", []) if o["type"] not in (1, 2)]
        subs = [o for o in schema.get("options", []) if o["type"] == 1]
        if subs:
            out.extend((f"{command.name} {s['name']}", s.get("options", [])) for s in subs)
        else:
            out.append((command.name, options))
    return out


def _check_messages(rec) -> None:
    for message in rec.messages():
        assert len(message.text()) <= 6000
        mentions = message.allowed_mentions
        if mentions is not None:
            assert not mentions.get("parse"), mentions
            assert mentions.get("roles", []) == [] and mentions.get("users", []) == []


async def test_every_slash_command_survives_hostile_options(harness: DiscordHarness) -> None:
    rng = random.Random(14)
    commands = _commands(harness)
    assert {"ask", "rule", "card", "explain", "forgetme"} <= {name.split()[0] for name, _ in commands}
    for name, options in commands:
        for _ in range(PER_COMMAND):
            values = {}
            for option in options:
                if option.get("required") or rng.random() < 0.5:
                    value = _value(rng, option)
                    if value is not None:
                        values[option["name"]] = value
            if any(o.get("required") and o["name"] not in values for o in options):
                continue
            CASES["slash runs"] += 1
            rec = await harness.slash(name, user=rng.randint(0, 2), options=values)
            await harness.settle()
            assert rec.acknowledged, (name, values, rec.kinds())
            _check_messages(rec)
            assert not harness.errors.records, (name, values, harness.errors.messages())


async def test_every_autocomplete_survives_hostile_input(harness: DiscordHarness) -> None:
    rng = random.Random(15)
    for name, options in _commands(harness):
        for option in (o for o in options if o.get("autocomplete")):
            for _ in range(PER_COMMAND):
                CASES["slash runs"] += 1
                typed = _text(rng, 0, option.get("max_length", 100))
                choices = await harness.autocomplete(name, option["name"], options={option["name"]: typed})
                assert len(choices) <= 25
                assert all(1 <= len(c["name"]) <= 100 for c in choices), choices
                assert not harness.errors.records, (name, typed, harness.errors.messages())


async def test_a_model_written_mention_never_pings(harness: DiscordHarness) -> None:
    rec = await harness.slash("ask", question="@everyone <@&1> what is trample?")
    await harness.settle()
    for message in rec.messages():
        assert message.allowed_mentions is not None
        assert not message.allowed_mentions.get("parse")
    assert isinstance(discord.AllowedMentions.none().to_dict(), dict)
