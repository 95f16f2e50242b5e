"""The types a generation backend and its callers share (``engine.backends``, ``engine.remote``)."""

from __future__ import annotations

from dataclasses import dataclass, field

Message = dict[str, str]
"""A chat message: ``{"role": ..., "content": ...}``."""


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """What a backend can serve right now."""

    ok: bool
    """The server answered its model list."""
    url: str
    models: tuple[str, ...] = ()
    """Every model name the server serves (base model and LoRA modules)."""
    base_model: str | None = None
    """The model used when no expert is asked for."""
    experts: dict[str, str] = field(default_factory=dict)
    """Expert -> served model name, for the experts the server has a module for."""
    missing_experts: tuple[str, ...] = ()
    """Experts with no module on the server (asking for them raises ``AdapterError``)."""
    latency_ms: float | None = None
    error: str | None = None
