"""Which experts answer: the one decision (``engine.experts.plan_experts``) both runners use."""

from __future__ import annotations

import pytest

from engine.api import Expert
from engine.errors import AdapterError
from engine.experts import ExpertPlan, Routing, plan_experts, serve_all

E, T, R = Expert.EXPLAIN, Expert.TEACH, Expert.REASON


def routed(*experts: Expert) -> Routing:
    return Routing(list(experts), {e: 1.0 for e in experts}, routed=True)


def fixed(*experts: Expert) -> Routing:
    return Routing(list(experts), {}, routed=False)


def test_all_served_and_fusable_several_experts_fuse() -> None:
    assert plan_experts(routed(E, T), {E, T, R}, can_fuse=True) == ExpertPlan([E, T], [E, T])
    assert serve_all(routed(E, T)) == ExpertPlan([E, T], [E, T])


def test_without_fusion_the_best_expert_answers_but_all_shape_the_prompt() -> None:
    assert plan_experts(routed(E, T), {E, T}, can_fuse=False) == ExpertPlan([E, T], [E])
    assert plan_experts(routed(E, T), None, can_fuse=False) == ExpertPlan([E, T], [E])  # a remote server


def test_routed_experts_without_an_adapter_are_dropped() -> None:
    assert plan_experts(routed(E, T), {T}, can_fuse=True) == ExpertPlan([T], [T])


def test_nothing_served_the_best_routed_expert_answers_on_the_base_model() -> None:
    assert plan_experts(routed(R, E), set(), can_fuse=True) == ExpertPlan([R], [None])


def test_a_fixed_expert_that_is_not_served_is_an_adapter_error() -> None:
    with pytest.raises(AdapterError) as info:
        plan_experts(fixed(T, E), {E}, can_fuse=True)
    assert info.value.expert == "teach"
    assert plan_experts(fixed(T), {T}, can_fuse=True) == ExpertPlan([T], [T])
