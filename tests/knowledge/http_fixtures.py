"""A real HTTP server on 127.0.0.1 for tests: serves a folder, and can misbehave on chosen paths.

Misbehaviours are what real servers do to a download: an error status (every time or the first few
times), a body cut short of its Content-Length, a slow answer.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Behaviour:
    status: int | None = None
    """Answer with this status instead of the file..."""
    times: int | None = None
    """...only for the first ``times`` requests (None: always)."""
    retry_after: str | None = None
    truncate_to: int | None = None
    """Send the full Content-Length but only this many bytes, then close the connection."""
    delay_s: float = 0.0
    served: int = field(default=0, init=False)


@dataclass
class SeenRequest:
    path: str
    headers: dict[str, str]


class FixtureServer:
    """``with FixtureServer(root) as server: server.url("/file")``; ``server.behave(path, ...)`` to misbehave."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.behaviours: dict[str, Behaviour] = {}
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        handler = partial(_Handler, self, directory=str(root))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fixture-http", daemon=True
        )

    def __enter__(self) -> FixtureServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def behave(self, path: str, **kwargs: object) -> Behaviour:
        behaviour = Behaviour(**kwargs)  # type: ignore[arg-type]
        self.behaviours[unquote(path)] = behaviour
        return behaviour

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == unquote(path))


class _Handler(SimpleHTTPRequestHandler):
    def __init__(self, server_state: FixtureServer, *args: object, **kwargs: object) -> None:
        self.state = server_state
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.state._lock:
            self.state.requests.append(SeenRequest(path, dict(self.headers.items())))
            behaviour = self.state.behaviours.get(path)
            if behaviour is not None:
                behaviour.served += 1
        if behaviour is None:
            super().do_GET()
            return
        if behaviour.delay_s:
            time.sleep(behaviour.delay_s)
        if behaviour.status is not None and (behaviour.times is None or behaviour.served <= behaviour.times):
            self.send_response(behaviour.status)
            if behaviour.retry_after is not None:
                self.send_header("Retry-After", behaviour.retry_after)
            body = f"status {behaviour.status}\n".encode()
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if behaviour.truncate_to is not None:
            data = (self.state.root / path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: behaviour.truncate_to])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


# ---- the update command's sources: a rules page and Scryfall's bulk-data index ----

RULES_TXT = "/media/2026/downloads/MagicCompRules 20260116.txt"
RULES_HREF = "/media/2026/downloads/MagicCompRules%2020260116.txt"


def fixture_objects(cards_dir: Path) -> tuple[list[dict], list[dict]]:
    """Card objects and ruling objects from the Scryfall fixture files, as a bulk file would hold them."""
    cards: dict[str, dict] = {}
    rulings: list[dict] = []
    for path in sorted(cards_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        items = data.get("data", []) if data.get("object") == "list" else [data]
        for obj in items:
            if obj.get("object") == "card" and obj.get("lang") == "en":
                cards.setdefault(obj["oracle_id"], obj)
            elif obj.get("object") == "ruling":
                rulings.append(obj)
    return list(cards.values()), rulings


def write_index(server: FixtureServer) -> None:
    """The bulk-data index, pointing at this server; sizes from the files as they are now."""
    root = server.root
    entries = [
        {"object": "bulk_data", "type": "default_cards", "download_uri": server.url("/bulk/missing.json")},
        *(
            {
                "object": "bulk_data",
                "type": kind,
                "download_uri": server.url(f"/bulk/{kind.replace('_', '-')}-20260101.json"),
                "size": (root / f"bulk/{kind.replace('_', '-')}-20260101.json").stat().st_size,
                "content_type": "application/json",
            }
            for kind in ("oracle_cards", "rulings")
        ),
    ]
    (root / "bulk-data").write_text(json.dumps({"object": "list", "data": entries}), encoding="utf-8")
