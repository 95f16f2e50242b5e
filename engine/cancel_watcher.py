"""Wakes a thread blocked reading a streamed HTTP response when its request is cancelled (engine.remote)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


class CancelWatcher:
    """One thread per backend that shuts down the sockets of streams whose cancel event is set.

    A thread blocked in ``recv`` does not see a flag; ``shutdown`` wakes it (the read fails at once) and
    tells the server the client left. The thread polls only while streams are open.
    """

    POLL_S = 0.05

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watched: dict[int, tuple[threading.Event, socket.socket]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def watch(self, cancel_event: threading.Event, response: httpx.Response) -> Iterator[None]:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):  # e.g. a mock transport: chunk-level checks still apply
            yield
            return
        key = id(response)
        with self._cond:
            self._watched[key] = (cancel_event, sock)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="hexcore-remote-cancel", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._watched.pop(key, None)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                for key, (event, sock) in list(self._watched.items()):
                    if event.is_set():
                        self._watched.pop(key, None)
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass  # already closed
                self._cond.wait(self.POLL_S if self._watched else None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)
