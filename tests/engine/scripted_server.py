"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 (``http.server``), for what a real
server will not do on demand: fail with a chosen status, stall before the first byte, break mid-answer,
serve LoRA module names like vLLM. Real HTTP over real sockets; used by the remote-backend tests.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _chunk(text: str) -> bytes:
    payload = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    return f"data: {json.dumps(payload)}\n\n".encode()


class ScriptedServer(ThreadingHTTPServer):
    """Answers chat completions from ``plan`` (first-in first-out), then from ``by_model``, else streams
    ``default_words``. Records every request body and whether a client hung up mid-stream."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.plan: deque[dict[str, Any]] = deque()
        self.by_model: dict[str, dict[str, Any]] = {}
        self.default_words = [
            "Flying ",
            "means ",
            "it ",
            "can ",
            "only ",
            "be ",
            "blocked ",
            "by ",
            "flyers.",
        ]
        self.models = [
            {"id": "reason", "object": "model", "parent": "base-model"},
            {"id": "base-model", "object": "model", "parent": None},
            {"id": "explain", "object": "model", "parent": "base-model"},
        ]
        self.requests: list[dict[str, Any]] = []
        self.disconnected = threading.Event()
        self.stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_action(self, model: str) -> dict[str, Any]:
        if self.plan:
            return self.plan.popleft()
        return self.by_model.get(model, {"kind": "stream", "words": self.default_words})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": self.server.models})
        else:
            self._json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        action = self.server.next_action(body.get("model", ""))
        if action.get("delay_s"):
            self.server.stop.wait(action["delay_s"])  # silent: not even headers
        if action["kind"] == "status":
            self._json(action["status"], action.get("body", {}), action.get("headers"))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in [_chunk(w) for w in action["words"]] + action.get("extra", []):
                self._send_chunk(event)
            if action.get("then") == "stall":
                self._wait_for_hangup()
                return
            if action.get("then") == "break":
                self.close_connection = True  # no terminating chunk: an incomplete body
                return
            self._send_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.server.disconnected.set()

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _wait_for_hangup(self) -> None:
        """Send nothing more; note when the client closes its side (a read of 0 bytes)."""
        conn = self.connection
        while not self.server.stop.is_set():
            readable, _, _ = select.select([conn], [], [], 0.05)
            if readable and conn.recv(1, socket.MSG_PEEK) == b"":
                self.server.disconnected.set()
                return
        self.close_connection = True


@contextlib.contextmanager
def running_server() -> Iterator[ScriptedServer]:
    """A ScriptedServer serving on a thread for the block, then shut down (clients hung up on)."""
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)
