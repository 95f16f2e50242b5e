"""One turn answered by several experts at once: cross-expert attention over their adapters (``engine.fusion``).

The local runner (``engine.runner.BatchRunner``) generates such a turn on its own, after the one-expert batch:
the experts' hidden states are mixed at every step, so the turn cannot share a mixed-adapter batch. Tokens
stream through the turn's guard as they come; the same repetition stop as the batched path ends a loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from engine.detokenize import without_loop
from engine.errors import AdapterError, GenerationError
from engine.runner_core import Generated, Prepared

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from engine.adapters import AdapterRegistry
    from engine.fusion import CrossExpertAttention
    from engine.model_loader import LoadedModel


class _FusedTokens:
    """``generate_fused``'s per-step callback: detokenize, stream, and stop at the end, a loop or a cancel."""

    def __init__(
        self,
        prepared: Prepared,
        tokenizer: PreTrainedTokenizerBase,
        eos: Collection[int],
        stop_on_repeat: int,
    ) -> None:
        from engine.generation import IncrementalDetokenizer, RepetitionStop

        self.prepared = prepared
        self.tokenizer = tokenizer
        self.detok = IncrementalDetokenizer(tokenizer)
        self.eos = eos
        self.loop = RepetitionStop(stop_on_repeat)  # the same loop stop as the batched path
        self.marks: list[float] = []
        self.ended = self.looped = False

    def __call__(self, tokens: torch.Tensor) -> bool:
        self.marks.append(time.perf_counter())
        token = int(tokens[0])
        if self.ended or token in self.eos:
            self.ended = True
            return False
        delta = self.detok.push(token)
        if delta:
            self.prepared.stream.feed(delta)
        if self.loop.repeats(self.detok.ids):
            self.looped = True
            return False
        return not self.prepared.item.cancelled

    def generated(self, started: float, names: list[str]) -> Generated:
        tail = self.detok.finish()
        if tail:
            self.prepared.stream.feed(tail)
        turn, detok = self.prepared.turn, self.detok
        first, last = (self.marks[0], self.marks[-1]) if self.marks else (started, started)
        new_tokens = len(detok.ids)
        reason = "stop" if self.ended else ("length" if new_tokens >= turn.max_new_tokens else "cancelled")
        shown = None
        if self.looped:
            reason = "repetition"
            shown = without_loop(self.tokenizer, detok.text, detok.ids, self.loop.n)
        return Generated(
            detok.text,
            reason,
            shown=shown,
            prefill_ms=(first - started) * 1000,
            generate_ms=(last - first) * 1000,
            adapters=tuple(names),
            fused=True,
            prompt_tokens=len(turn.input_ids),
            new_tokens=new_tokens,
            batch_size=len(turn.adapters),
        )


def run_fused(
    prepared: Prepared,
    registry: AdapterRegistry,
    loaded: LoadedModel,
    fusion: CrossExpertAttention,
    *,
    eos: Collection[int],
    stop_on_repeat: int,
) -> Generated | None:
    """Generate one several-expert turn; None when it failed on its own (an adapter that vanished).

    A failure of generation itself fails the request and is re-raised: like a failed decode step of a
    batch, the model may be in a bad state, and the worker restarts the runner."""
    import torch

    from engine.fusion import generate_fused

    turn, item = prepared.turn, prepared.item
    tokens = _FusedTokens(prepared, loaded.tokenizer, eos, stop_on_repeat)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            names = stack.enter_context(registry.use(turn.adapters))
        except AdapterError as exc:
            item.fail(exc)
            return None
        ids = torch.tensor([turn.input_ids], device=loaded.device)
        try:
            generate_fused(
                registry.peft_model,
                ids,
                torch.ones_like(ids),
                names,
                fusion,
                max_new_tokens=turn.max_new_tokens,
                eos_token_id=sorted(eos),
                pad_token_id=loaded.tokenizer.pad_token_id,
                on_token=tokens,
                experts=turn.adapters,
            )
        except Exception as exc:
            item.fail(GenerationError(f"fused generation failed: {type(exc).__name__}: {exc}"))
            raise
    return tokens.generated(started, list(names))
