"""The promotion rule: beat both the serving adapter and the base model by the margin."""

from __future__ import annotations

import math

import pytest

from training.promotion import decide


@pytest.mark.parametrize(
    ("candidate", "base", "serving", "promote", "baseline"),
    [
        (8.0, 10.0, 9.0, True, "serving v1"),  # 11% better than serving
        (8.9, 10.0, 9.0, False, "serving v1"),  # better, but by less than the 2% margin
        (9.5, 10.0, None, True, "base model"),  # nothing served yet: beat the base model
        (9.0, 8.0, 12.0, False, "base model"),  # beats a bad serving adapter, but not the base model
        (math.inf, 10.0, 9.0, False, "serving v1"),
        (math.nan, 10.0, 9.0, False, "serving v1"),
    ],
)
def test_decide(candidate: float, base: float, serving: float | None, promote: bool, baseline: str) -> None:
    decision = decide(candidate, base, serving, margin=0.02, serving_name="v1")
    assert decision.promote is promote and decision.baseline == baseline
    assert decision.reason.startswith("promoted" if promote else "not promoted")
    if not promote and math.isfinite(candidate):
        assert (
            "serving adapter stays" in decision.reason and f"{decision.required_ppl:.3f}" in decision.reason
        )
