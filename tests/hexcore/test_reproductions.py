"""The ten reproductions of issue 14, each on a copy of a built state dir: now one line and the documented exit
code (2 bad input or settings, 1 failed run), or a clean rebuild with the damaged file kept aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hexcore.state_lock import state_lock
from tests.hexcore.conftest import Hexcore, assert_clean
from tests.hexcore.state_support import ENCODER

SLOW_LOAD = "loaded something slow before checking the input"


def _forbid(monkeypatch: pytest.MonkeyPatch, target: str, attribute: str) -> None:
    import importlib

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{SLOW_LOAD}: {target}.{attribute}")

    monkeypatch.setattr(importlib.import_module(target), attribute, refuse)


def test_1_truncated_graph_is_moved_aside_and_rebuilt(
    hexcore: Hexcore, caplog: pytest.LogCaptureFixture
) -> None:
    graph = hexcore.state / "index" / "graph.json.gz"
    damaged = graph.read_bytes()[:5000]
    graph.write_bytes(damaged)
    result = hexcore("search", "trample", "--k", "2")
    assert_clean(result, codes=(0,))
    assert "702.19" in result.stdout
    assert (graph.parent / "graph.json.gz.damaged").read_bytes() == damaged
    assert graph.read_bytes() != damaged  # rebuilt and saved again
    assert "moved it to graph.json.gz.damaged" in caplog.text  # one warning line (stderr outside tests)


def test_1_truncated_graph_with_index_stats_says_to_rebuild(hexcore: Hexcore) -> None:
    graph = hexcore.state / "index" / "graph.json.gz"
    graph.write_bytes(graph.read_bytes()[:5000])
    hexcore("index", "stats")  # loads only the rules: the graph is read by search and the engine
    result = hexcore("search", "trample", "--json")
    assert_clean(result, codes=(0,))
    assert json.loads(result.stdout)


def test_2_truncated_embedding_cache_does_not_stop_index_build(hexcore: Hexcore) -> None:
    cache = hexcore.state / "index" / "embeddings" / f"{ENCODER.model_id}.npz"
    damaged = cache.read_bytes()[:3000]
    cache.write_bytes(damaged)
    result = hexcore("index", "build")
    assert_clean(result, codes=(0,))
    assert "Rules release 2026-01-16" in result.stdout
    assert (cache.parent / f"{cache.name}.damaged").read_bytes() == damaged
    assert cache.stat().st_size > len(damaged)  # a new cache was written


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HEXCORE_ENGINE_MAX_NEW_TOKENS", "abc"),
        ("HEXCORE_ENGINE_MAX_NEW_TOKENS", "-1"),
        ("HEXCORE_ENGINE_QUEUE_SIZE", "0"),
        ("HEXCORE_ENGINE_QUANTIZATION", "bogus"),
    ],
)
def test_3_invalid_setting_is_one_line_naming_the_variable(
    hexcore: Hexcore, variable: str, value: str
) -> None:
    result = hexcore("rule", "702.19b", env={variable: value})
    assert_clean(result, codes=(2,))
    assert result.stderr.count("\n") == 1
    assert variable in result.stderr and value in result.stderr and "fix or unset it" in result.stderr


def test_4_a_second_index_build_is_refused_while_one_runs(hexcore: Hexcore) -> None:
    import os

    before = (hexcore.state / "index" / "graph.json.gz").read_bytes()
    with state_lock(hexcore.state, "index build"):  # reentrant in this process: the refused one is another
        result = _other_process_build(hexcore)
    assert result[0] == 1, result
    assert f"another index build is running (pid {os.getpid()}" in result[1]
    assert result[1].strip().count("\n") == 0
    assert (hexcore.state / "index" / "graph.json.gz").read_bytes() == before


def _other_process_build(hexcore: Hexcore) -> tuple[int, str]:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "hexcore", "index", "build"],
        cwd=hexcore.state.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stderr


def test_4_a_failed_graph_save_fails_the_build(hexcore: Hexcore) -> None:
    index = hexcore.state / "index"
    (index / "graph.json.gz").unlink()
    (index / "graph.json.gz").mkdir()  # cannot be replaced by a file
    result = hexcore("index", "build")
    assert_clean(result, codes=(1,))
    assert "cannot write the index" in result.stderr


def test_5_rule_number_over_the_int_conversion_limit(hexcore: Hexcore) -> None:
    result = hexcore("rule", "1" * 5000)
    assert_clean(result, codes=(1,))
    assert "No rule 1111" in result.stderr and len(result.stderr) < 300


def test_6_validate_garbage_dir_fails_before_the_base_model_loads(
    hexcore: Hexcore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid(monkeypatch, "engine.model_loader", "load_base_model")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "adapter_model.safetensors").write_bytes(bytes(range(256)))
    (garbage / "adapter_config.json").write_text("{x")
    (garbage / "notes.txt").write_bytes(b"\x00\xff")
    result = hexcore("validate", str(garbage), "--expert", "reason")
    assert_clean(result, codes=(1,))
    assert "adapter_config.json is not valid JSON" in result.stderr


@pytest.mark.parametrize("token", ["not-a-token", "abc.def", "a" * 30 + ".bbbb.\n" + "c" * 30, "ŧøķēñ.x.y"])
def test_7_malformed_bot_token_is_one_line_before_the_engine_loads(
    hexcore: Hexcore, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    _forbid(monkeypatch, "bot.cli", "run_bot")
    result = hexcore("bot", env={"DISCORD_TOKEN": token})
    assert_clean(result, codes=(2,))
    assert "DISCORD_TOKEN does not look like a bot token" in result.stderr


@pytest.mark.parametrize(
    "content",
    ["", "\n\n", '{"question": "What is trample?"}\n'],
    ids=["empty", "blank-lines", "no-gold-rules"],
)
def test_8_eval_retrieval_with_nothing_to_score_fails(
    hexcore: Hexcore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    _forbid(monkeypatch, "knowledge.cli", "_load")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(content)
    result = hexcore("eval", "retrieval", "--qa", str(qa))
    assert_clean(result, codes=(1,))
    assert "nothing to measure recall on" in result.stderr


@pytest.mark.parametrize("question", ["", "   ", "\t\n"])
def test_9_empty_question_is_refused_before_the_model_loads(
    hexcore: Hexcore, monkeypatch: pytest.MonkeyPatch, question: str
) -> None:
    _forbid(monkeypatch, "engine.cli", "open_engine")
    result = hexcore("ask", question)
    assert_clean(result, codes=(2,))
    assert "Please ask a question" in result.stderr


@pytest.mark.parametrize("query", ["", "  "])
def test_9_empty_search_is_refused(hexcore: Hexcore, monkeypatch: pytest.MonkeyPatch, query: str) -> None:
    _forbid(monkeypatch, "knowledge.cli", "_load")
    result = hexcore("search", query)
    assert_clean(result, codes=(2,))
    assert "search query is empty" in result.stderr


def test_10_promote_repairs_a_garbage_serving_pointer(hexcore: Hexcore) -> None:
    pointer = hexcore.state / "adapters" / "reason" / "serving.json"
    pointer.write_bytes(b"\x00garbage{")
    listed = hexcore("adapters", "list")
    assert_clean(listed, codes=(1,))
    assert "hexcore adapters promote reason VERSION" in listed.stderr
    result = hexcore("adapters", "promote", "reason", "v0")
    assert_clean(result, codes=(0,))
    assert "reason now serves v0" in result.stdout
    assert json.loads(pointer.read_text())["serving"] == "v0"
    assert (pointer.parent / "serving.json.damaged").read_bytes() == b"\x00garbage{"
    assert_clean(hexcore("adapters", "list"), codes=(0,))
