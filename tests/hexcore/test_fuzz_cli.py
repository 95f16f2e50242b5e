"""Every ``hexcore`` command fed malformed arguments, options, files and stdin (hypothesis).

Invariants (tests.hexcore.conftest.assert_clean): no traceback, exit code 0 / 1 (failed run) / 2 (bad input),
a failure says why in one ``error:`` line, and never the "unexpected failure" safety net (that would mean a
missing handler). Whatever would load a language model, train or reach the network is replaced by a typed
error (``no_slow_loads``), so input that passes every check ends there within milliseconds; input that
must be refused (blank questions, garbage adapter dirs) must be refused before it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hexcore.cli import main
from tests.hexcore.conftest import SENTINEL, Hexcore, assert_clean

EXAMPLES = int(os.environ.get("HEXCORE_FUZZ_EXAMPLES", "12"))
"""Examples per fuzzed command: 12 keeps the layer under a minute in CI; raise it for a deeper search."""

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

EXPERTS = ["reason", "explain", "teach", "predict", "retrospect"]
WEIRD_TEXT = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=0, max_size=40
)
NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["0", "-1", "1e9", "nan", "inf", "0x10", "1" * 5000, "", " "]),
)


def command_paths(group: click.Group = main, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            out.extend(command_paths(command, (*prefix, name)))
        else:
            out.append((*prefix, name))
    return out


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


@pytest.fixture
def pools(tmp_path: Path, hexcore: Hexcore) -> dict[str, list[str]]:
    """Files and folders the fuzzed paths are drawn from: all inside tmp_path, none of them sane."""
    files = tmp_path / "files"
    files.mkdir()
    samples = {
        "empty.jsonl": b"",
        "garbage.bin": bytes(range(256)) * 4,
        "not-utf8.jsonl": b"\xff\xfe{\x00",
        "list.jsonl": b"[1, 2, 3]\n",
        "no-question.jsonl": b'{"id": 1, "rule_refs": ["702.19b"]}\n',
        "number-question.jsonl": b'{"question": 5, "rule_refs": "702.19b"}\n',
        "valid.jsonl": b'{"question": "What is trample?", "rule_refs": ["702.19b"]}\n',
        "config.yaml": b"epochs: [unclosed\n",
        "config.json": b'{"epochs": "many", "lora_rank": -4}',
    }
    for name, content in samples.items():
        (files / name).write_bytes(content)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 10**9}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    (tmp_path / "empty-dir").mkdir()
    paths = [str(p) for p in files.iterdir()]
    dirs = [str(adapter), str(tmp_path / "empty-dir"), str(hexcore.state / "adapters" / "reason" / "v0")]
    missing = [str(tmp_path / "missing" / "x.jsonl"), "relative/missing"]
    return {"file": paths + missing + dirs[:1], "dir": dirs + missing + paths[:1]}


def _value(draw: st.DrawFn, param: click.Parameter, pools: dict[str, list[str]]) -> list[str]:
    kind = param.type
    if isinstance(kind, click.Path):
        return [
            draw(
                st.sampled_from(
                    pools["dir" if not kind.dir_okay or kind.file_okay else "dir"] + pools["file"]
                )
            )
        ]
    rarely = draw(st.integers(0, 4)) == 0  # mostly values that parse, so the command itself runs
    if isinstance(kind, click.Choice):
        return [draw(WEIRD_TEXT if rarely else st.sampled_from(list(kind.choices)))]
    if isinstance(kind, click.types.IntParamType | click.IntRange):
        return [draw(NUMBERS if rarely else st.integers(1, 20).map(str))]
    return [draw(st.one_of(WEIRD_TEXT, NUMBERS, st.sampled_from(EXPERTS + ["v0", "v99", "../v0", "base"])))]


@st.composite
def argv(draw: st.DrawFn, command: click.Command, pools: dict[str, list[str]]) -> list[str]:
    """Arguments for ``command``: its own options and arguments (any subset, any order of options), with
    values drawn from valid choices, junk text, extreme numbers and the path pools, plus stray tokens."""
    args: list[str] = []
    for param in command.params:
        if isinstance(param, click.Option):
            if param.name == "help" or not draw(st.booleans()):
                continue
            args.append(draw(st.sampled_from(param.opts)))
            if not param.is_flag:
                args.extend(_value(draw, param, pools))
    if draw(st.integers(0, 4)) == 0:
        args.append(draw(st.sampled_from(["--bogus", "-x", "--", "--json=1", "-"])))
    for param in command.params:
        if isinstance(param, click.Argument) and draw(st.integers(0, 4)) > 0:
            count = draw(st.integers(1, 3)) if param.nargs == -1 else 1
            for _ in range(count):
                args.extend(_value(draw, param, pools))
    return args


CHEAP = {("bot",): 4, ("chat",): 8, ("data", "update"): 8}


@pytest.mark.usefixtures("no_slow_loads")
@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_every_command_survives_malformed_input(
    hexcore: Hexcore, pools: dict[str, list[str]], path: tuple[str, ...]
) -> None:
    command = _command(path)

    @FUZZ
    @given(args=argv(command, pools), stdin=st.one_of(st.none(), WEIRD_TEXT))
    def check(args: list[str], stdin: str | None) -> None:
        result = hexcore(*path, *args, input=stdin)
        assert_clean(result)
        if SENTINEL in result.output:
            assert result.exit_code == 1

    check()


def test_the_fuzz_table_covers_every_command() -> None:
    """A new command is fuzzed without anyone adding it here; this pins that the walk finds them all."""
    assert {" ".join(p) for p in command_paths()} >= {
        "ask", "chat", "rule", "card", "search", "bot", "train", "validate", "index build", "index stats",
        "data update", "eval retrieval", "eval qa", "adapters list", "adapters promote", "adapters rollback",
        "adapters export", "adapters compare",
    }  # fmt: skip


@pytest.mark.usefixtures("no_slow_loads")
@FUZZ
@given(
    number=st.one_of(WEIRD_TEXT, NUMBERS, st.from_regex(r"\d{1,6}(\.\d{1,6}[a-z]{0,3})?\.?", fullmatch=True))
)
def test_rule_lookups_never_fail_unclearly(hexcore: Hexcore, number: str) -> None:
    result = hexcore("rule", number)
    assert_clean(result)
    if result.exit_code == 1:
        assert "No rule" in result.stderr or "No glossary" in result.stderr or "rule" in result.stderr
        assert len(result.stderr) < 400  # a pasted page is not echoed back whole


@pytest.mark.usefixtures("no_slow_loads")
@FUZZ
@given(question=st.one_of(st.text(" \t\n\r\x0b\x0c", max_size=20), st.text(min_size=2001, max_size=2100)))
def test_questions_the_engine_would_refuse_are_refused_before_it_loads(
    hexcore: Hexcore, question: str
) -> None:
    result = hexcore("ask", question)
    assert_clean(result, codes=(2,))
    assert SENTINEL not in result.output
