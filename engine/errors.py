"""The closed set of errors the engine raises to its callers (vLLM style).

The bot maps each to a short ephemeral message; ``user_message`` is that text.
"""

from __future__ import annotations


class EngineError(Exception):
    user_message = "Something went wrong while answering. Please try again."


class EngineOverloaded(EngineError):
    """The admission queue is full; raised at once, never queued."""

    def __init__(self, ahead: int) -> None:
        self.ahead = ahead
        super().__init__(f"engine busy: {ahead} requests ahead")

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return f"I'm busy right now ({self.ahead} questions ahead of yours). Please try again in a moment."


class InvalidRequest(EngineError):
    user_message = "That request can't be answered as asked."

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.user_message = reason


class AdapterError(EngineError):
    """An expert adapter is missing, corrupt or incompatible; rejected when registered."""

    user_message = "That expert is unavailable right now; other experts still work."

    def __init__(self, expert: str, reason: str) -> None:
        self.expert = expert
        self.reason = reason
        super().__init__(f"adapter {expert!r}: {reason}")


class EngineDead(EngineError):
    """The worker is down (crashed and restarting, or stopped)."""

    user_message = "The answering engine is restarting. Please try again in a few seconds."


class GenerationError(EngineError):
    """Generation failed for this request (out of memory, CUDA error, model error)."""

    user_message = "Generating that answer failed. Please try again, or ask a shorter question."


class RequestCancelled(EngineError):
    """The request was cancelled by its caller before it finished."""


class ModelLoadError(EngineError):
    """The base model could not be found or loaded; the message says what to set or install."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.user_message = message


class BackendConfigError(EngineError):
    """The backend settings are unusable (unknown backend, remote without a URL); says what to set."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.user_message = message


class RemoteTimeout(GenerationError):
    """The remote generation server stayed silent longer than the read timeout."""

    user_message = "The answering server is too slow right now. Please try again in a moment."


class RemoteOverloaded(EngineOverloaded):
    """The remote server refused the request as overloaded (429, or 503 after the retries)."""

    def __init__(self, detail: str) -> None:
        super().__init__(ahead=0)  # the server does not say how many are ahead
        self.args = (f"generation server overloaded: {detail}",)

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return "The answering server is busy right now. Please try again in a moment."
