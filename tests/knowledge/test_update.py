"""The data update against a real HTTP server on 127.0.0.1 serving copies of the shared data (in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from knowledge.cards import ORACLE_CARDS_FILE, RULINGS_FILE, load_card_dir
from knowledge.errors import UpdateError
from knowledge.rules import load_rules
from knowledge.update import UpdateReport, find_rules_txt_url, update_data
from tests.knowledge.http_fixtures import RULES_HREF, RULES_TXT, FixtureServer, write_index


def run_update(server: FixtureServer, data_dir: Path, **kwargs) -> UpdateReport:
    return update_data(
        data_dir,
        rules_page_url=server.url("/en/rules.html"),
        scryfall_bulk_url=server.url("/bulk-data"),
        progress=kwargs.pop("progress", False),
        backoff_s=0.0,
        **kwargs,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """A data folder holding an earlier update's files, including one the new release would replace."""
    data_dir = tmp_path / "data"
    (data_dir / "rules").mkdir(parents=True)
    (data_dir / "cards").mkdir()
    (data_dir / "rules/2025-11-14.txt").write_bytes(b"previous rules release\r")
    (data_dir / "rules/2026-01-16.txt").write_bytes(b"previous copy of this release\r")
    (data_dir / "cards" / ORACLE_CARDS_FILE).write_bytes(b'[{"object": "card", "name": "Previous"}]')
    (data_dir / "cards" / RULINGS_FILE).write_bytes(b"[]")
    return data_dir


def test_update_downloads_verifies_and_installs(site: FixtureServer, tmp_path: Path, latest_rules_path: Path):
    data_dir = tmp_path / "fresh"
    report = run_update(site, data_dir, progress=True)

    assert report.rules_release == "2026-01-16"
    assert report.rules_path == data_dir / "rules/2026-01-16.txt"
    assert report.rules_path.read_bytes() == latest_rules_path.read_bytes()
    assert report.rule_count == len(load_rules(report.rules_path).rules) > 3000
    assert report.card_count == len(json.loads((site.root / "bulk/oracle-cards-20260101.json").read_text()))
    assert report.ruling_count == 22  # Ixidron 5 + Mairsil 11 + Tawnos's Coffin 6
    assert report.bytes_downloaded > latest_rules_path.stat().st_size
    assert "2026-01-16" in report.summary()

    loaded = load_card_dir(data_dir / "cards")
    assert len(loaded) == report.card_count
    cards = {card.name: card for card in loaded}
    assert len(cards["Ixidron"].rulings) == 5
    assert [f.name for f in cards["Fire // Ice"].faces] == ["Fire", "Ice"]
    leftovers = [p.name for p in data_dir.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    # The default_cards entry (a broken link) was never fetched: only the two files we need.
    assert site.count("/bulk/missing.json") == 0


def test_update_sends_user_agent_and_accept(site: FixtureServer, tmp_path: Path):
    run_update(site, tmp_path / "data")
    by_path = {r.path: r.headers for r in site.requests}
    for path in ("/en/rules.html", RULES_TXT, "/bulk-data", "/bulk/oracle-cards-20260101.json"):
        assert by_path[path]["User-Agent"].startswith("Hexcore/")
    assert by_path["/bulk-data"]["Accept"].startswith("application/json")
    assert by_path["/en/rules.html"]["Accept"].startswith("text/html")


def test_update_replaces_previous_files(site: FixtureServer, previous: Path, latest_rules_path: Path):
    # As on the real page, the link may hold a raw space; it must be encoded on the way out.
    page = site.root / "en/rules.html"
    page.write_text(page.read_text().replace(RULES_HREF, RULES_TXT), encoding="utf-8")
    run_update(site, previous)
    assert site.count(RULES_TXT) == 1
    assert (previous / "rules/2026-01-16.txt").read_bytes() == latest_rules_path.read_bytes()
    assert (previous / "rules/2025-11-14.txt").read_bytes() == b"previous rules release\r"
    assert b"Previous" not in (previous / "cards" / ORACLE_CARDS_FILE).read_bytes()


def _break_rules_link(site: FixtureServer) -> None:
    (site.root / "en/rules.html").write_text("<html>The rules moved.</html>", encoding="utf-8")


def _rules_not_rules(site: FixtureServer) -> None:
    (site.root / RULES_TXT.lstrip("/")).write_text("<html>Not found</html>", encoding="utf-8")


def _invalid_json(site: FixtureServer) -> None:
    path = site.root / "bulk/oracle-cards-20260101.json"
    path.write_text(path.read_text()[:-2000], encoding="utf-8")  # close-delimited: no length to check
    write_index(site)


def _size_mismatch(site: FixtureServer) -> None:
    index = json.loads((site.root / "bulk-data").read_text())
    index["data"][1]["size"] += 1
    (site.root / "bulk-data").write_text(json.dumps(index))


def _empty_array(site: FixtureServer) -> None:
    (site.root / "bulk/rulings-20260101.json").write_text("[]")
    write_index(site)


def _no_rulings_entry(site: FixtureServer) -> None:
    index = json.loads((site.root / "bulk-data").read_text())
    index["data"] = [e for e in index["data"] if e["type"] != "rulings"]
    (site.root / "bulk-data").write_text(json.dumps(index))


FAILURES = {
    "404 on the rulings file": (lambda s: s.behave("/bulk/rulings-20260101.json", status=404), "404"),
    "404 on the rules text": (lambda s: s.behave(RULES_HREF, status=404), "404"),
    "truncated card download": (
        lambda s: s.behave("/bulk/oracle-cards-20260101.json", truncate_to=5000),
        "failed",
    ),
    "invalid JSON": (_invalid_json, "not a valid JSON array"),
    "size differs from index": (_size_mismatch, "bulk-data index says"),
    "empty rulings": (_empty_array, "no ruling objects"),
    "no rulings entry": (_no_rulings_entry, "'rulings'"),
    "no rules link": (_break_rules_link, "No link to a rules .txt"),
    "rules text is not rules": (_rules_not_rules, "did not verify as a rules release"),
    "persistent 503": (
        lambda s: s.behave("/bulk-data", status=503),
        r"503 Service Unavailable \(tried 4 times\)",
    ),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failed_update_leaves_previous_data(site: FixtureServer, previous: Path, failure: str):
    breakage, message = FAILURES[failure]
    breakage(site)
    before = snapshot(previous)
    with pytest.raises(UpdateError, match=message):
        run_update(site, previous)
    assert snapshot(previous) == before  # same files, same bytes, no temp files left


def test_retries_429_and_5xx_then_succeeds(site: FixtureServer, tmp_path: Path):
    site.behave("/bulk-data", status=503, times=2)
    site.behave("/en/rules.html", status=429, times=1, retry_after="0")
    report = run_update(site, tmp_path / "data")
    assert report.card_count > 0
    assert site.count("/bulk-data") == 3
    assert site.count("/en/rules.html") == 2


def test_retries_a_truncated_body_then_gives_up(site: FixtureServer, tmp_path: Path):
    site.behave("/bulk/rulings-20260101.json", truncate_to=100)
    with pytest.raises(UpdateError):
        run_update(site, tmp_path / "data", retries=2)
    assert site.count("/bulk/rulings-20260101.json") == 3  # first try plus two retries, then give up


@pytest.mark.parametrize("status", [401, 403, 404])
def test_never_retries_auth_and_not_found(site: FixtureServer, tmp_path: Path, status: int):
    site.behave("/bulk-data", status=status)
    with pytest.raises(UpdateError, match=str(status)):
        run_update(site, tmp_path / "data", retries=5)
    assert site.count("/bulk-data") == 1


def test_unfollowed_redirect_is_not_saved_as_data(site: FixtureServer, previous: Path):
    site.behave("/bulk/rulings-20260101.json", status=302)
    before = snapshot(previous)
    with httpx.Client(follow_redirects=False) as client, pytest.raises(UpdateError, match="302"):
        run_update(site, previous, client=client)
    assert snapshot(previous) == before
    assert site.requests[-1].headers["User-Agent"].startswith("Hexcore/")  # set on a caller's client too


def test_timeout_is_an_update_error(site: FixtureServer, previous: Path):
    site.behave("/bulk-data", delay_s=1.0)
    before = snapshot(previous)
    with httpx.Client(timeout=0.2) as client, pytest.raises(UpdateError, match="Could not reach"):
        run_update(site, previous, client=client, retries=0)
    assert snapshot(previous) == before


def test_unreachable_server_is_an_update_error(tmp_path: Path):
    with FixtureServer(tmp_path) as server:
        dead = server.url("/")
    with pytest.raises(UpdateError, match="Could not reach"):
        update_data(
            tmp_path / "data",
            rules_page_url=dead + "en/rules",
            scryfall_bulk_url=dead + "bulk-data",
            progress=False,
            retries=1,
            backoff_s=0.0,
        )


def test_find_rules_txt_url():
    page = (
        '<a href="/docs/other.txt">x</a>'
        "<a href='https://media.wizards.com/2026/downloads/MagicCompRules%2020260116.txt'>TXT</a>"
    )
    assert find_rules_txt_url(page, "https://magic.wizards.com/en/rules") == (
        "https://media.wizards.com/2026/downloads/MagicCompRules%2020260116.txt"
    )
    relative = '<a href="downloads/Comprehensive Rules 20250404.txt?a=1&amp;b=2.txt">TXT</a>'
    assert find_rules_txt_url(relative, "https://example.org/en/rules") == (
        "https://example.org/en/downloads/Comprehensive Rules 20250404.txt?a=1&b=2.txt"
    )
    assert find_rules_txt_url('<a href="/only.txt">', "http://h/x") == "http://h/only.txt"
    scripted = '<script>{"url":"https:\\/\\/media.wizards.com\\/2026\\/downloads\\/MagicCompRules 20260116.txt"}</script>'
    assert find_rules_txt_url(scripted, "https://magic.wizards.com/en/rules") == (
        "https://media.wizards.com/2026/downloads/MagicCompRules 20260116.txt"
    )
    protocol_relative = '<a href="//media.wizards.com/x/MagicCompRules 20260116.txt">'
    assert find_rules_txt_url(protocol_relative, "https://magic.wizards.com/en/rules").startswith(
        "https://media."
    )
    with pytest.raises(UpdateError, match="No link"):
        find_rules_txt_url('<a href="/rules.pdf">PDF</a>', "http://h/x")
