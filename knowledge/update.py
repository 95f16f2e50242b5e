"""``hexcore data update``: fetch the current Comprehensive Rules and Scryfall's oracle cards and rulings.

Every file is downloaded to a hidden temporary file in its destination folder, verified (the rules parse,
the card files are complete JSON arrays of the right size) and only then moved into place with
``os.replace``, all files together at the end. A failure anywhere raises :class:`UpdateError` and removes
the temporary files, so the previous data stays exactly as it was and nothing half-written is left.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

import httpx
import tenacity
from tqdm import tqdm

from knowledge.cards import ORACLE_CARDS_FILE, RULINGS_FILE, card_from_scryfall, iter_json_array
from knowledge.errors import RulesParseError, UpdateError
from knowledge.rules import parse_rules

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_RULES_PAGE_URL = "https://magic.wizards.com/en/rules"
DEFAULT_SCRYFALL_BULK_URL = "https://api.scryfall.com/bulk-data"
MIN_RULES = 1000
"""A real release has over 3000 numbered rules; fewer means we downloaded something else."""
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_PAGE_BYTES = 20 * 1024 * 1024
MAX_RETRY_AFTER_S = 60.0

# An href to a .txt file, quoted either way; the Comprehensive Rules one is preferred when several match.
_TXT_HREF = re.compile(r"""href\s*=\s*["']([^"'<>]+?\.txt)["']""", re.IGNORECASE)
_TXT_URL = re.compile(r"""(?:https?:)?//[^\r\n"'<>()\\]+?\.txt(?!\w)""", re.IGNORECASE)
_RULES_NAME = re.compile(r"comp(?:rehensive)?(?:[\s_-]|%20)*rules", re.IGNORECASE)


def _user_agent() -> str:
    try:
        version = metadata.version("hexcore")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"Hexcore/{version} (Magic: The Gathering rules assistant; data update)"


@dataclass(frozen=True, slots=True)
class UpdateReport:
    rules_release: str
    rules_path: Path
    rule_count: int
    cards_path: Path
    card_count: int
    rulings_path: Path
    ruling_count: int
    bytes_downloaded: int

    def summary(self) -> str:
        return (
            f"Rules {self.rules_release}: {self.rule_count} rules -> {self.rules_path}\n"
            f"Cards: {self.card_count} -> {self.cards_path}\n"
            f"Rulings: {self.ruling_count} -> {self.rulings_path}\n"
            f"Downloaded {self.bytes_downloaded / 1e6:.1f} MB"
        )


@dataclass(slots=True)
class _Staged:
    temp: Path
    final: Path
    size: int


class _Transient(Exception):
    """A failure worth another try (429, 5xx, a network error); ``error`` is raised when no try is left."""

    def __init__(self, error: UpdateError, retry_after_s: float = 0.0) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after_s = retry_after_s


class _Fetcher:
    """GET with a User-Agent and Accept header, capped retries (tenacity) with exponential backoff for 429,
    5xx and network errors (reading the body included), never for other 4xx (401/403/404 will not change by
    asking again). A ``Retry-After`` header lengthens the wait, up to ``MAX_RETRY_AFTER_S``."""

    def __init__(self, client: httpx.Client, retries: int, backoff_s: float, progress: bool) -> None:
        self.client = client
        # Scryfall asks every client to identify itself; keep a caller's own User-Agent if it set one.
        agent = client.headers.get("User-Agent", "")
        self.headers = {} if agent and not agent.startswith("python-httpx") else {"User-Agent": _user_agent()}
        self.retries = retries
        self.backoff_s = backoff_s
        self.progress = progress

    def _wait_s(self, state: tenacity.RetryCallState) -> float:
        delay = self.backoff_s * 2 ** (state.attempt_number - 1)
        failure = state.outcome.exception() if state.outcome is not None else None
        retry_after = failure.retry_after_s if isinstance(failure, _Transient) else 0.0
        return min(max(delay, retry_after), MAX_RETRY_AFTER_S)

    def _fetch(self, url: str, accept: str, read: Callable[[httpx.Response], T]) -> T:
        """``read`` of the 2xx response to GET ``url``; a transient failure, sending or reading, tries again."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=self._wait_s,
            retry=tenacity.retry_if_exception_type(_Transient),
            before_sleep=lambda state: log.warning("GET %s: %s; retrying", url, state.outcome.exception()),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    response = self._send(url, accept, attempt.retry_state.attempt_number)
                    with closing(response):
                        try:
                            return read(response)
                        except httpx.TransportError as exc:  # includes a body cut short of its Content-Length
                            reason = exc or type(exc).__name__
                            raise _Transient(UpdateError(f"Download of {url} failed: {reason}")) from exc
        except _Transient as exc:
            raise exc.error from exc.__cause__
        raise AssertionError("unreachable")  # the last try returns or raises

    def _send(self, url: str, accept: str, attempt: int) -> httpx.Response:
        """The streamed 2xx response; :class:`_Transient` for what may pass, UpdateError for what will not."""
        try:
            request = self.client.build_request("GET", url, headers={**self.headers, "Accept": accept})
            response = self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _Transient(UpdateError(f"Could not reach {url}: {exc or type(exc).__name__}")) from exc
        if response.is_success:
            return response
        response.close()  # an error, or a redirect a caller's client does not follow
        tries = f" (tried {attempt} times)" if attempt > 1 else ""
        error = UpdateError(f"{url} answered HTTP {response.status_code} {response.reason_phrase}{tries}.")
        if response.status_code in RETRY_STATUS:
            raise _Transient(error, _retry_after_s(response.headers.get("Retry-After", "")))
        raise error

    def get_bytes(self, url: str, accept: str) -> bytes:
        """A small document (a web page, an index), read into memory."""

        def read(response: httpx.Response) -> bytes:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_PAGE_BYTES:
                    raise UpdateError(f"{url} is larger than {MAX_PAGE_BYTES} bytes; not the expected page.")
            return bytes(body)

        return self._fetch(url, accept, read)

    def download(self, url: str, dest_dir: Path, accept: str, label: str) -> Path:
        """Stream ``url`` into a hidden temp file in ``dest_dir`` and return its path (caller owns it)."""
        dest_dir.mkdir(parents=True, exist_ok=True)

        def read(response: httpx.Response) -> Path:
            fd, name = tempfile.mkstemp(prefix=f".{label}.", suffix=".part", dir=dest_dir)
            temp = Path(name)
            try:
                with os.fdopen(fd, "wb") as out:
                    total = int(response.headers.get("Content-Length", 0)) or None
                    with tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        desc=label,
                        disable=not self.progress,
                        leave=False,
                    ) as bar:
                        seen = 0
                        for chunk in response.iter_bytes(1 << 16):
                            out.write(chunk)
                            bar.update(response.num_bytes_downloaded - seen)
                            seen = response.num_bytes_downloaded
                    out.flush()
                    os.fsync(out.fileno())
                return temp
            except BaseException:
                temp.unlink(missing_ok=True)
                raise

        return self._fetch(url, accept, read)


def _retry_after_s(value: str) -> float:
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return 0.0


def find_rules_txt_url(page: str, page_url: str) -> str:
    """The absolute URL of the Comprehensive Rules .txt linked from the rules page.

    Looks at ``href`` attributes first, then at any URL ending in .txt (a page rendered by script may only
    carry the link in embedded JSON, with escaped slashes). The file name holds a space; httpx encodes it.
    """
    page = page.replace("\\/", "/")
    hrefs = _TXT_HREF.findall(page) or _TXT_URL.findall(page)
    links = [urljoin(page_url, html.unescape(href).strip()) for href in hrefs]
    if not links:
        raise UpdateError(f"No link to a rules .txt file on {page_url}; the page layout may have changed.")
    preferred = [link for link in links if _RULES_NAME.search(link)]
    return (preferred or links)[0]


def _verify_rules(temp: Path, url: str) -> tuple[str, int]:
    try:
        text = temp.read_bytes().decode("utf-8-sig")
        doc = parse_rules(text, source=url)
    except (UnicodeDecodeError, RulesParseError) as exc:
        raise UpdateError(f"{url} did not verify as a rules release: {exc}") from exc
    if len(doc.rules) < MIN_RULES:
        raise UpdateError(f"{url} has only {len(doc.rules)} rules; expected at least {MIN_RULES}.")
    return doc.effective_date, len(doc.rules)


def _verify_array(temp: Path, url: str, expected_size: Any, kind: str) -> int:
    """Count the ``kind`` objects ("card" or "ruling") in a downloaded bulk file; fail unless complete."""
    size = temp.stat().st_size
    if isinstance(expected_size, int) and expected_size > 0 and size != expected_size:
        raise UpdateError(f"{url}: got {size} bytes but the bulk-data index says {expected_size}.")
    count = 0
    try:
        for obj in iter_json_array(temp):
            if kind == "card":
                count += card_from_scryfall(obj) is not None
            else:
                count += isinstance(obj, dict) and obj.get("object") == "ruling"
    except ValueError as exc:
        raise UpdateError(f"{url} is not a valid JSON array: {exc}") from exc
    if count == 0:
        raise UpdateError(f"{url} has no {kind} objects.")
    return count


def _bulk_entries(index_bytes: bytes, url: str) -> dict[str, dict[str, Any]]:
    try:
        index = json.loads(index_bytes)
    except ValueError as exc:
        raise UpdateError(f"{url} did not return JSON: {exc}") from exc
    entries = index.get("data") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise UpdateError(f"{url} is not a Scryfall bulk-data list.")
    return {e["type"]: e for e in entries if isinstance(e, dict) and e.get("type") and e.get("download_uri")}


def update_data(
    data_dir: Path,
    *,
    rules_page_url: str = DEFAULT_RULES_PAGE_URL,
    scryfall_bulk_url: str = DEFAULT_SCRYFALL_BULK_URL,
    client: httpx.Client | None = None,
    progress: bool = True,
    retries: int = 3,
    backoff_s: float = 1.0,
) -> UpdateReport:
    """Download the current rules release to ``data_dir/rules/<date>.txt`` and Scryfall's oracle cards and
    rulings to ``data_dir/cards/``; all or nothing (see the module docs). Raises :class:`UpdateError`."""
    rules_dir, cards_dir = Path(data_dir) / "rules", Path(data_dir) / "cards"
    own_client = client is None
    if client is None:
        client = httpx.Client(
            headers={"User-Agent": _user_agent()},
            timeout=httpx.Timeout(60.0, connect=15.0),
            follow_redirects=True,
        )
    fetch = _Fetcher(client, retries=retries, backoff_s=backoff_s, progress=progress)
    staged: list[_Staged] = []
    try:
        page = fetch.get_bytes(rules_page_url, "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
        rules_url = find_rules_txt_url(page.decode("utf-8", "replace"), rules_page_url)
        log.info("rules release at %s", rules_url)
        temp = fetch.download(rules_url, rules_dir, "text/plain,*/*;q=0.8", "rules")
        staged.append(_Staged(temp, temp, temp.stat().st_size))
        release, rule_count = _verify_rules(temp, rules_url)
        staged[-1].final = rules_dir / f"{release}.txt"

        entries = _bulk_entries(fetch.get_bytes(scryfall_bulk_url, "application/json"), scryfall_bulk_url)
        counts: dict[str, int] = {}
        for kind, filename, obj_kind in (
            ("oracle_cards", ORACLE_CARDS_FILE, "card"),
            ("rulings", RULINGS_FILE, "ruling"),
        ):
            entry = entries.get(kind)
            if entry is None:
                raise UpdateError(f"{scryfall_bulk_url} lists no {kind!r} bulk file.")
            url = entry["download_uri"]
            temp = fetch.download(url, cards_dir, "application/json;q=0.9,*/*;q=0.8", kind)
            staged.append(_Staged(temp, cards_dir / filename, temp.stat().st_size))
            counts[kind] = _verify_array(temp, url, entry.get("size"), obj_kind)

        for item in staged:  # everything verified: swap the files in
            os.replace(item.temp, item.final)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # anything the fetcher did not already wrap
        raise UpdateError(f"Data update failed: {exc}") from exc
    except OSError as exc:
        raise UpdateError(f"Data update failed writing to {data_dir}: {exc}") from exc
    finally:
        for item in staged:
            item.temp.unlink(missing_ok=True)
        if own_client:
            client.close()
    return UpdateReport(
        rules_release=release,
        rules_path=rules_dir / f"{release}.txt",
        rule_count=rule_count,
        cards_path=cards_dir / ORACLE_CARDS_FILE,
        card_count=counts["oracle_cards"],
        rulings_path=cards_dir / RULINGS_FILE,
        ruling_count=counts["rulings"],
        bytes_downloaded=sum(item.size for item in staged),
    )
