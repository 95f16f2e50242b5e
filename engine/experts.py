"""Which experts answer a request: the routing decision, then what the runner can serve.

The one place this is decided. ``AnswerPipeline.route`` gives a :class:`Routing` (the request's own experts,
or the router's choice); :func:`plan_experts` turns it into an :class:`ExpertPlan` given the experts whose
adapters are served and whether several can be fused; each runner supplies that as its ``Planner``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from engine.api import Expert
from engine.errors import AdapterError


@dataclass(slots=True)
class Routing:
    experts: list[Expert]
    """Best first."""
    scores: dict[Expert, float]
    """The router's score per expert (empty when the request fixed its experts)."""
    routed: bool
    """True when the router chose the experts (False: the request fixed them)."""
    ms: float = 0.0
    """Time the router took."""


@dataclass(frozen=True, slots=True)
class ExpertPlan:
    experts: list[Expert]
    """The experts that answer, best first: their instructions shape the prompt."""
    adapters: list[Expert | None]
    """What generates: one entry (one adapter, or None for the base model), or several to fuse."""


Planner = Callable[[Routing], ExpertPlan]
"""A runner's choice of experts for a routing decision (it knows which adapters it serves)."""


def plan_experts(routing: Routing, served: Collection[Expert] | None, *, can_fuse: bool) -> ExpertPlan:
    """The experts that answer, given those whose adapters are served (``served``; None: all of them).

    A fixed expert that is not served is an ``AdapterError`` (the user asked for it by name); routed experts
    that are not served are dropped, and when none is left the best one answers on the base model. Several
    experts are fused only when ``can_fuse`` and every one has its adapter; otherwise the best one answers.
    """
    if served is None:
        experts = list(routing.experts)
    elif not routing.routed:
        missing = [e for e in routing.experts if e not in served]
        if missing:
            raise AdapterError(missing[0].value, "no adapter is being served for this expert")
        experts = list(routing.experts)
    else:
        experts = [e for e in routing.experts if e in served] or routing.experts[:1]
    adapters: list[Expert | None] = [e if served is None or e in served else None for e in experts]
    if len(adapters) > 1 and (not can_fuse or None in adapters):
        adapters = adapters[:1]
    return ExpertPlan(experts, adapters)


def serve_all(routing: Routing) -> ExpertPlan:
    """The planner when every expert is served and can be fused (tests, tools without adapters)."""
    return plan_experts(routing, None, can_fuse=True)
