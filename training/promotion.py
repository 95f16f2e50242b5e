"""When a newly trained adapter may replace the serving one.

The candidate must beat BOTH the serving adapter and the bare base model by a relative margin of
held-out perplexity: ``candidate < (1 - margin) * min(serving, base)``. Beating the serving adapter alone
is not enough (it could itself be worse than no adapter); a non-finite perplexity never promotes. The
switch itself is ``AdapterStore.promote``: one atomic replace of ``serving.json``, so a crash leaves the old
or the new pointer, never a broken one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PromotionDecision:
    promote: bool
    reason: str
    candidate_ppl: float
    baseline_ppl: float
    """The perplexity to beat: the better of the serving adapter and the base model."""
    baseline: str
    """What the baseline is ("serving v3", "base model")."""
    required_ppl: float
    margin: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate_ppl: float,
    base_ppl: float,
    serving_ppl: float | None,
    margin: float,
    serving_name: str | None = None,
) -> PromotionDecision:
    """Promote only if the candidate's held-out perplexity is ``margin`` below the best alternative."""
    if serving_ppl is not None and serving_ppl <= base_ppl:
        baseline_ppl, baseline = serving_ppl, f"serving {serving_name}" if serving_name else "serving adapter"
    else:
        baseline_ppl, baseline = base_ppl, "base model"
    required = baseline_ppl * (1.0 - margin)

    def made(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(promote, reason, candidate_ppl, baseline_ppl, baseline, required, margin)

    if not math.isfinite(candidate_ppl):
        return made(
            False, "not promoted: the new adapter's held-out perplexity is not finite (training diverged)"
        )
    if candidate_ppl < required:
        gain = 1.0 - candidate_ppl / baseline_ppl
        return made(
            True,
            f"promoted: held-out perplexity {candidate_ppl:.3f} is {gain:.1%} below the {baseline} ({baseline_ppl:.3f})",
        )
    return made(
        False,
        f"not promoted: held-out perplexity {candidate_ppl:.3f} does not beat the {baseline} ({baseline_ppl:.3f}) "
        f"by the required {margin:.0%} margin (needs < {required:.3f}); the serving adapter stays",
    )
