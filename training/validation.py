"""Held-out perplexity of the base model and of adapters, the A/B comparison, and the validation report.

All adapters under test are loaded side by side into one ``PeftModel`` over the base model (peft's
``load_adapter``), so the base weights are in memory once; the bare model is measured with the adapters
disabled. Perplexity is exp(mean negative log-likelihood per answer token), over the same tokenization the
trainer uses (prompt masked), so it is comparable with the training curves. The evaluator unloads the
adapters when it closes: the base model is left exactly as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.batching import collate, encode_all, token_nll
from training.examples import TrainingExample
from training.promotion import PromotionDecision, decide

if TYPE_CHECKING:
    from peft import PeftModel

    from engine.model_loader import LoadedModel


@dataclass(slots=True)
class EvalResult:
    loss: float
    """Mean negative log-likelihood per answer token (nats)."""
    tokens: int
    examples: int
    per_example: list[float] = field(default_factory=list, repr=False)
    """Mean token loss of each example, in the order given (NaN for an example dropped as too long)."""

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if math.isfinite(self.loss) else math.inf

    def to_json(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "tokens": self.tokens,
            "examples": self.examples,
        }


class AdapterEvaluator:
    """Measure the base model and any number of adapter directories on the same examples."""

    def __init__(self, loaded: LoadedModel, max_seq_len: int = 320, batch_size: int = 4) -> None:
        self.loaded = loaded
        self.max_seq_len = max_seq_len
        self.batch_size = batch_size
        self._peft: PeftModel | None = None
        self._names: dict[str, str] = {}

    def __enter__(self) -> AdapterEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, adapter_dir: Path | str) -> str:
        """Load an adapter directory (peft format); returns its name for :meth:`evaluate`."""
        from peft import PeftModel

        key = str(Path(adapter_dir).resolve())
        if key in self._names:
            return self._names[key]
        name = f"eval{len(self._names)}"
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(
                self.loaded.model, key, adapter_name=name, is_trainable=False
            )
        else:
            self._peft.load_adapter(key, adapter_name=name, is_trainable=False)
        self._peft.eval()
        self._names[key] = name
        return name

    @torch.no_grad()
    def evaluate(
        self,
        adapter_dir: Path | str | None,
        examples: Sequence[TrainingExample],
        experts: Sequence[str] | None = None,
    ) -> EvalResult:
        """Held-out loss of an adapter (None = the base model) on ``examples``."""
        encoded, order = [], []
        for i, example in enumerate(examples):
            enc, _ = encode_all(self.loaded.tokenizer, [example], self.max_seq_len, experts)
            if enc:
                encoded.append(enc[0])
                order.append(i)
        per_example = [math.nan] * len(examples)
        if not encoded:
            return EvalResult(math.nan, 0, 0, per_example)
        model, context = self._model_for(adapter_dir)
        ranked = sorted(range(len(encoded)), key=lambda j: len(encoded[j].input_ids))
        device = self.loaded.device
        total_nll, total_tokens = 0.0, 0
        with context:
            for start in range(0, len(ranked), self.batch_size):
                idx = ranked[start : start + self.batch_size]
                nll, counts = token_nll(
                    model, collate([encoded[j] for j in idx], self.loaded.tokenizer.pad_token_id, device)
                )
                for j, value, count in zip(idx, nll.tolist(), counts.tolist(), strict=True):
                    per_example[order[j]] = value / max(count, 1)
                total_nll += float(nll.sum())
                total_tokens += int(counts.sum())
        return EvalResult(total_nll / max(total_tokens, 1), total_tokens, len(encoded), per_example)

    def _model_for(self, adapter_dir: Path | str | None) -> tuple[Any, Any]:
        import contextlib

        if adapter_dir is None:
            if self._peft is None:
                return self.loaded.model, contextlib.nullcontext()
            return self._peft, self._peft.disable_adapter()
        name = self.add(adapter_dir)
        self._peft.set_adapter(name)
        return self._peft, contextlib.nullcontext()

    def close(self) -> None:
        if self._peft is not None:
            base = self._peft.unload()
            base.eval()
            self.loaded.model = base
            self._peft = None
            self._names.clear()


# --- A/B -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Comparison:
    a: EvalResult
    b: EvalResult
    a_win_rate: float
    """Share of the examples on which A's loss is lower than B's."""
    winner: str
    """"a", "b" or "tie" (perplexities within 0.5% of each other)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a.to_json(),
            "b": self.b.to_json(),
            "a_win_rate": self.a_win_rate,
            "winner": self.winner,
        }


def compare(
    a: Path | str | None,
    b: Path | str | None,
    examples: Sequence[TrainingExample],
    loaded: LoadedModel,
    *,
    experts: Sequence[str] | None = None,
    max_seq_len: int = 320,
    batch_size: int = 4,
) -> Comparison:
    """A/B of two adapters (None = the base model) on the same held-out examples."""
    with AdapterEvaluator(loaded, max_seq_len, batch_size) as evaluator:
        ra, rb = evaluator.evaluate(a, examples, experts), evaluator.evaluate(b, examples, experts)
    pairs = [
        (x, y)
        for x, y in zip(ra.per_example, rb.per_example, strict=True)
        if math.isfinite(x) and math.isfinite(y)
    ]
    wins = sum(1 for x, y in pairs if x < y)
    if abs(ra.perplexity - rb.perplexity) <= 0.005 * min(ra.perplexity, rb.perplexity):
        winner = "tie"
    else:
        winner = "a" if ra.perplexity < rb.perplexity else "b"
    return Comparison(ra, rb, wins / len(pairs) if pairs else 0.0, winner)


# --- the validation report -------------------------------------------------------------------------------


@dataclass(slots=True)
class ValidationReport:
    expert: str
    candidate: str
    serving: str | None
    base: EvalResult
    candidate_result: EvalResult
    serving_result: EvalResult | None
    decision: PromotionDecision
    negatives: dict[str, Any] | None = None
    """Perplexity of unhelpful answers (never trained on) for the base model and the candidate."""

    @property
    def reduction_vs_base(self) -> float:
        """Relative drop of held-out perplexity from the base model to the candidate (0.2 = 20% lower)."""
        return 1.0 - self.candidate_result.perplexity / self.base.perplexity

    def to_json(self) -> dict[str, Any]:
        return {
            "expert": self.expert,
            "candidate": self.candidate,
            "serving": self.serving,
            "base": self.base.to_json(),
            "candidate_result": self.candidate_result.to_json(),
            "serving_result": self.serving_result.to_json() if self.serving_result else None,
            "reduction_vs_base": self.reduction_vs_base,
            "negatives": self.negatives,
            "decision": self.decision.to_json(),
        }


def validate_adapter(
    loaded: LoadedModel,
    candidate_dir: Path | str,
    val_examples: Sequence[TrainingExample],
    *,
    expert: str,
    margin: float,
    serving_dir: Path | str | None = None,
    serving_name: str | None = None,
    negatives: Sequence[TrainingExample] = (),
    max_seq_len: int = 320,
    batch_size: int = 4,
) -> ValidationReport:
    """Base vs candidate vs serving on the held-out set, and whether the candidate should be promoted."""
    prompt = [expert]
    with AdapterEvaluator(loaded, max_seq_len, batch_size) as evaluator:
        base = evaluator.evaluate(None, val_examples, prompt)
        candidate = evaluator.evaluate(candidate_dir, val_examples, prompt)
        serving = evaluator.evaluate(serving_dir, val_examples, prompt) if serving_dir is not None else None
        negative = None
        if negatives:
            nb, nc = (
                evaluator.evaluate(None, negatives, prompt),
                evaluator.evaluate(candidate_dir, negatives, prompt),
            )
            negative = {
                "examples": nb.examples,
                "base_perplexity": nb.perplexity,
                "candidate_perplexity": nc.perplexity,
            }
    decision = decide(
        candidate.perplexity, base.perplexity, serving.perplexity if serving else None, margin, serving_name
    )
    return ValidationReport(
        expert, str(candidate_dir), serving_name, base, candidate, serving, decision, negative
    )
