"""Generation on an OpenAI-compatible server (vLLM, llama.cpp's server): ``RemoteBackend``.

Each expert is served as a LoRA module whose name is the expert's (``vllm serve BASE --enable-lora
--lora-modules reason=/adapters/reason ...``, written by ``engine.export``), so a request's ``model`` is
the expert name, or the base model's served name when no expert is asked for. Answers stream as chat
completions over server-sent events; retrieval, routing and citations stay in the Hexcore process.

Failure policy, chosen so that a user never sees a replayed or spliced answer:

- Connection errors, 429 and 5xx are retried with exponential backoff and jitter (``Retry-After`` is
  honoured, capped), but only before the first token; once text has been streamed, an error ends the
  answer. 401/403/404 and other 4xx are never retried.
- A server that stays silent past ``read_timeout_s`` is not retried either: it is busy, and asking again
  would double its work. The error says it timed out.
- Errors map to the engine's closed set: unreachable -> ``EngineDead``; 429 (or 503 after the retries)
  -> ``EngineOverloaded``; 400/413/422 -> ``InvalidRequest``; unknown model of an expert (404) ->
  ``AdapterError``; anything else -> ``GenerationError``.
- Cancellation: the stream checks ``cancel_event`` between chunks, and a watcher thread shuts the socket
  down when it is set while the stream waits for bytes, so the server sees the disconnect at once (vLLM
  then aborts the request) and the worker thread is never stuck on a cancelled request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

from engine.api import Expert
from engine.backend_types import BackendHealth, Message
from engine.cancel_watcher import CancelWatcher
from engine.errors import (
    AdapterError,
    BackendConfigError,
    EngineDead,
    EngineError,
    GenerationError,
    InvalidRequest,
    RemoteOverloaded,
    RemoteTimeout,
)

if TYPE_CHECKING:
    from hexcore.settings import EngineSettings

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
INVALID_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    url: str
    """The API root, ``.../v1`` (added when missing)."""
    base_model: str | None = None
    """Served name of the base model; None: discovered from ``/v1/models`` (the model without a parent)."""
    api_key: str | None = None
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 60.0
    retries: int = 3
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 4.0
    expert_models: Mapping[str, str] = field(default_factory=dict)
    """Expert -> served model name, where it is not the expert's own name."""
    temperature: float = 0.0
    """Greedy by default, like the local engine."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise BackendConfigError(f"remote URL {self.url!r} must start with http:// or https://")
        url = self.url.rstrip("/")
        object.__setattr__(self, "url", url if url.endswith("/v1") else url + "/v1")
        if self.retries < 0 or self.backoff_base_s <= 0 or self.backoff_cap_s < self.backoff_base_s:
            raise BackendConfigError("retries must be >= 0 and 0 < backoff_base_s <= backoff_cap_s")

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> RemoteConfig:
        if not settings.remote_url:
            raise BackendConfigError("set HEXCORE_ENGINE_REMOTE_URL, e.g. http://gpu-host:8000/v1")
        key = settings.remote_api_key
        return cls(
            url=settings.remote_url,
            base_model=settings.remote_model,
            api_key=key.get_secret_value() if key is not None else None,
            connect_timeout_s=settings.remote_connect_timeout_s,
            read_timeout_s=settings.remote_read_timeout_s,
            retries=settings.remote_retries,
        )


class _Retry(Exception):
    """Internal: a failure before the first token that may be retried; ``error`` is raised if not."""

    def __init__(self, error: EngineError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class RemoteBackend:
    """A :class:`engine.backends.GenerationBackend` over an OpenAI-compatible HTTP server. Thread-safe."""

    name = "remote"

    def __init__(self, config: RemoteConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.Client(
            base_url=config.url,
            headers=headers,
            timeout=httpx.Timeout(
                connect=config.connect_timeout_s,
                read=config.read_timeout_s,
                write=config.read_timeout_s,
                pool=config.read_timeout_s,
            ),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            transport=transport,
        )
        self._base_model = config.base_model
        self._lock = threading.Lock()
        self._watcher = CancelWatcher()
        # "Equal jitter": half the exponential step fixed, half random, so retries spread out but never
        # come at once; a server's Retry-After (capped) is waited for when it asks for longer.
        step, cap = config.backoff_base_s / 2, config.backoff_cap_s / 2
        self._wait = _WaitRetryAfter(
            wait_exponential(multiplier=step, max=cap) + wait_random_exponential(multiplier=step, max=cap),
            cap=config.backoff_cap_s,
        )
        self.last_health: BackendHealth | None = None
        """The latest ``health()`` result (cheap to read from the event loop, e.g. for ``/status``)."""

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> RemoteBackend:
        return cls(RemoteConfig.from_settings(settings))

    # ---- names --------------------------------------------------------------------------------------

    def model_for(self, expert: str | None) -> str:
        """The served model name for ``expert`` (None: the base model, discovered once if not configured)."""
        if expert is not None:
            expert = str(expert.value if isinstance(expert, Expert) else expert)
            return self.config.expert_models.get(expert, expert)
        if self._base_model is None:
            models = self._list_models(self.config.connect_timeout_s + 5)
            base = _pick_base(models)
            if base is None:
                raise GenerationError(f"the server at {self.config.url} lists no models")
            with self._lock:
                self._base_model = base
        return self._base_model

    # ---- generation ---------------------------------------------------------------------------------

    def stream(
        self,
        messages: Sequence[Message],
        expert: str | None,
        max_new_tokens: int,
        cancel_event: threading.Event,
    ) -> Iterator[str]:
        """Stream a chat completion's text deltas (see the module doc for retries and errors)."""
        if max_new_tokens < 1:
            raise InvalidRequest("max_new_tokens must be at least 1")
        expert_name = None if expert is None else str(expert.value if isinstance(expert, Expert) else expert)
        model = self.model_for(expert_name)
        body = {
            "model": model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": max_new_tokens,
            "temperature": self.config.temperature,
            "stream": True,
        }
        opened = self._open(body, expert_name, cancel_event)
        if opened is None:
            return
        first, rest = opened
        try:
            yield first
            yield from rest
        finally:
            rest.close()  # the consumer stopped early: hang up now, not when the generator is collected

    def _open(
        self, body: dict[str, Any], expert: str | None, cancel_event: threading.Event
    ) -> tuple[str, Generator[str, None, None]] | None:
        """The answer's first delta and the stream of the rest; None if cancelled or the answer is empty.

        Everything up to the first delta may be retried (nothing has been shown yet); the rest never is.
        """
        retrying = Retrying(
            retry=retry_if_exception_type(_Retry),
            stop=stop_after_attempt(self.config.retries + 1),
            wait=self._wait,
            sleep=cancel_event.wait,  # a cancel ends the wait at once; the next attempt then returns
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    if cancel_event.is_set():
                        return None
                    answer = self._attempt(body, expert, cancel_event)
                    first = next(answer, None)  # sends the request; raises _Retry for a retryable failure
                    return None if first is None else (first, answer)
        except _Retry as retry:
            raise retry.error from None
        return None  # pragma: no cover - Retrying either returns from an attempt or raises

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "remote generation failed (%s); retry %d/%d in %.2fs",
            error.error if isinstance(error, _Retry) else error,
            state.attempt_number,
            self.config.retries,
            state.upcoming_sleep,
        )

    def _attempt(
        self, body: dict[str, Any], expert: str | None, cancel_event: threading.Event
    ) -> Generator[str, None, None]:
        request = self._client.build_request("POST", "/chat/completions", json=body)
        try:
            response = self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                raise _Retry(self._unreachable(exc)) from None
            raise self._timeout("before answering") from None
        except httpx.TransportError as exc:
            raise _Retry(self._unreachable(exc)) from None
        started = False  # once a delta has been yielded, nothing is retried
        try:
            with self._watcher.watch(cancel_event, response):
                try:
                    if response.status_code != 200:
                        response.read()
                        self._raise_for_status(response, body["model"], expert)
                    for data in iter_sse_data(response.iter_lines()):
                        if cancel_event.is_set() or data.strip() == "[DONE]":
                            return
                        text = self._delta_text(data, body["model"], expert)
                        if text:
                            started = True
                            yield text
                except httpx.TimeoutException:
                    if cancel_event.is_set():
                        return
                    raise self._timeout(
                        "in the middle of the answer" if started else "before answering"
                    ) from None
                except httpx.TransportError as exc:
                    if cancel_event.is_set():
                        return  # our watcher shut the socket down
                    if not started:  # broke before any text: nothing to replay, safe to retry
                        raise _Retry(self._unreachable(exc)) from None
                    raise GenerationError(
                        f"the connection to the generation server broke mid-answer: {type(exc).__name__}"
                    ) from exc
        finally:
            response.close()

    def _raise_for_status(self, response: httpx.Response, model: str, expert: str | None) -> None:
        status = response.status_code
        detail = _error_detail(response)
        where = f"{self.config.url} answered {status}"
        if status in RETRY_STATUSES:
            retry_after = _retry_after(response)
            if status == 429 or status == 503:
                raise _Retry(RemoteOverloaded(f"{where}: {detail}"), retry_after)
            raise _Retry(GenerationError(f"{where}: {detail}"), retry_after)
        if status in INVALID_STATUSES:
            raise InvalidRequest(f"The answering server rejected the request: {detail}"[:300])
        if status == 404:
            if expert is not None:
                raise AdapterError(expert, f"the server at {self.config.url} serves no model {model!r}")
            raise GenerationError(
                f"the server at {self.config.url} serves no base model {model!r}; set "
                "HEXCORE_ENGINE_REMOTE_MODEL to a name from its /v1/models"
            )
        if status in (401, 403):
            raise GenerationError(
                f"{where}: the server refused our credentials (HEXCORE_ENGINE_REMOTE_API_KEY): {detail}"
            )
        raise GenerationError(f"{where}: {detail}")

    def _delta_text(self, data: str, model: str, expert: str | None) -> str:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise GenerationError(f"the generation server sent a malformed event: {data[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise GenerationError(f"the generation server sent a malformed event: {data[:120]!r}")
        if "error" in chunk:  # vLLM reports errors that happen after the headers inside the stream
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            code = error.get("code") if isinstance(error, dict) else None
            if code == 404 and expert is not None:
                raise AdapterError(expert, f"the server cannot serve model {model!r}: {message}")
            raise GenerationError(f"the generation server failed mid-answer: {message}")
        choices = chunk.get("choices") or []
        if not choices:
            return ""  # e.g. a usage-only chunk
        delta = choices[0].get("delta") or {}
        return delta.get("content") or ""

    def _unreachable(self, exc: Exception) -> EngineDead:
        return EngineDead(
            f"the generation server at {self.config.url} is unreachable: {type(exc).__name__}: {exc}"
        )

    def _timeout(self, when: str) -> RemoteTimeout:
        return RemoteTimeout(
            f"the generation server at {self.config.url} sent nothing for {self.config.read_timeout_s:g} s "
            f"{when} (HEXCORE_ENGINE_REMOTE_READ_TIMEOUT_S)"
        )

    # ---- health -------------------------------------------------------------------------------------

    def _list_models(self, timeout: float) -> list[dict[str, Any]]:
        try:
            response = self._client.get("/models", timeout=timeout)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code != 200:
            raise GenerationError(
                f"{self.config.url}/models answered {response.status_code}: {_error_detail(response)}"
            )
        try:
            data = response.json().get("data", [])
        except (ValueError, AttributeError):
            raise GenerationError(f"{self.config.url}/models did not answer a model list") from None
        return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def health(self, timeout: float = 5.0) -> BackendHealth:
        """List the served models and which experts have a module. Never raises; ``ok`` says if it worked."""
        started = time.perf_counter()
        try:
            models = self._list_models(timeout)
        except EngineError as exc:
            result = BackendHealth(ok=False, url=self.config.url, error=str(exc))
        else:
            ids = tuple(m["id"] for m in models)
            base = self._base_model or _pick_base(models)
            experts = {e.value: self.model_for(e.value) for e in Expert}
            result = BackendHealth(
                ok=True,
                url=self.config.url,
                models=ids,
                base_model=base,
                experts={e: name for e, name in experts.items() if name in ids},
                missing_experts=tuple(e for e, name in experts.items() if name not in ids),
                latency_ms=(time.perf_counter() - started) * 1000,
            )
        self.last_health = result
        return result

    def check(self, timeout: float = 5.0) -> BackendHealth:
        """``health()``, raising ``EngineDead`` with the reason when the server cannot be used."""
        result = self.health(timeout)
        if not result.ok:
            raise EngineDead(result.error or f"the generation server at {self.config.url} is not answering")
        return result

    def close(self) -> None:
        self._watcher.close()
        self._client.close()


# ---- helpers ---------------------------------------------------------------------------------------


def _pick_base(models: Sequence[Mapping[str, Any]]) -> str | None:
    """vLLM lists LoRA modules with ``parent`` = the base model; the base has none."""
    for model in models:
        if not model.get("parent"):
            return model["id"]
    return models[0]["id"] if models else None


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined by newlines; comments skipped)."""
    buffer: list[str] = []
    for line in lines:
        if not line:
            if buffer:
                yield "\n".join(buffer)
                buffer = []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            buffer.append(value[1:] if value.startswith(" ") else value)
    if buffer:
        yield "\n".join(buffer)


def _error_detail(response: httpx.Response) -> str:
    """The server's error message: OpenAI ``{"error": {"message"}}``, vLLM ``{"message"}``, FastAPI ``{"detail"}``."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date (rare from inference servers): our own backoff applies


class _WaitRetryAfter(wait_base):
    """tenacity wait: ``backoff``, or the failure's ``Retry-After`` when longer, capped at ``cap``."""

    def __init__(self, backoff: wait_base, cap: float) -> None:
        self.backoff, self.cap = backoff, cap

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = self.backoff(retry_state)
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        retry_after = error.retry_after if isinstance(error, _Retry) else None
        return delay if retry_after is None else max(delay, min(retry_after, self.cap))
