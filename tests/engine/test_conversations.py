"""ConversationStore on real SQLite: a file for the bot (survives a restart), memory for the CLI."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from engine.conversations import ConversationStore


def turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": f"answer to {text}"}]


@pytest.fixture(params=["memory", "file"])
def make(request, tmp_path: Path):
    def build(**kwargs) -> ConversationStore:
        path = tmp_path / "conversations.sqlite3" if request.param == "file" else None
        return ConversationStore(path=path, **kwargs)

    return build


def test_caps_least_recently_used_and_expires(make) -> None:
    now = [0.0]
    store = make(max_sessions=2, ttl_s=10, clock=lambda: now[0])
    store.put("a", turn("1"))
    now[0] = 1.0
    store.put("b", turn("2"))
    now[0] = 2.0
    store.put("c", turn("3"))
    assert store.get("a") == []  # least recently used out
    assert store.get("c") == turn("3") and len(store) == 2
    now[0] = 12.5  # c was last used at 2.0: gone after 10 s without a turn
    assert store.get("c") == [] and len(store) == 0
    store.put("d", [])
    assert store.get("d") == [] and store.end("d") and not store.end("d")
    assert store.get(None) == []


def test_a_later_turn_replaces_the_history_and_keeps_unicode(make) -> None:
    store = make(max_sessions=5, ttl_s=60)
    store.put("t", turn("Lim-Dûl's Vault"))
    longer = turn("Lim-Dûl's Vault") + turn("And Æther Vial?")
    store.put("t", longer)
    assert store.get("t") == longer


def test_history_survives_a_restart_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "conversations.sqlite3"
    first = ConversationStore(max_sessions=5, ttl_s=3600, path=path)
    first.put("1234", turn("How does trample work?"))
    first.close()  # the bot process ends (a deploy)
    again = ConversationStore(max_sessions=5, ttl_s=3600, path=path)
    assert again.get("1234") == turn("How does trample work?")
    assert again.end("1234")
    assert ConversationStore(max_sessions=5, ttl_s=3600, path=path).get("1234") == []


def test_an_unreadable_file_is_moved_aside_and_answers_go_on(tmp_path: Path, caplog) -> None:
    path = tmp_path / "conversations.sqlite3"
    path.write_bytes(b"this is not a database " * 100)
    store = ConversationStore(max_sessions=5, ttl_s=60, path=path)
    assert store.get("x") == []
    store.put("x", turn("still works"))
    assert store.get("x") == turn("still works")
    kept = list(tmp_path.glob("conversations.sqlite3.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not a database")
    assert "unreadable" in caplog.text


def test_a_locked_database_fails_the_write_not_the_caller(tmp_path: Path, caplog) -> None:
    path = tmp_path / "conversations.sqlite3"
    store = ConversationStore(max_sessions=5, ttl_s=60, path=path, busy_timeout_s=0.05)
    store.put("x", turn("first"))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        assert store.put("x", turn("second")) is False
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert "could not store conversation x" in caplog.text
    assert store.get("x") == turn("first")  # nothing half-written
    assert store.put("x", turn("second")) and store.get("x") == turn("second")


def test_a_damaged_row_reads_as_a_new_conversation(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    store = ConversationStore(max_sessions=5, ttl_s=60, path=path)
    store.put("x", turn("fine"))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE conversations SET history = '{not json' WHERE session_id = 'x'")
    assert store.get("x") == []


def test_threads_write_concurrently_without_losing_a_turn(make) -> None:
    store = make(max_sessions=1000, ttl_s=60)

    def writer(n: int) -> None:
        for i in range(25):
            store.put(f"{n}-{i}", turn(f"{n}/{i}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == 100
    assert store.get("3-24") == turn("3/24")


def test_bad_bounds_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_sessions"):
        ConversationStore(max_sessions=0, ttl_s=1)
