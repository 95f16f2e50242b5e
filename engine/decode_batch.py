"""A generation job (``GenJob``), its stats (``GenStats``), and the generator's decode batch.

``DecodeRow`` is one job while it runs: its prompt, the ids generated so far, its column in the cache.
``DecodeBatch`` is the rows decoding together and the cache they share (``engine.kv_cache.GrowCache``):
rows join with their own prefilled one-row cache and leave when they finish (continuous batching).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engine.detokenize import IncrementalDetokenizer, RepetitionStop
from engine.kv_cache import GrowCache


@dataclass(slots=True)
class GenStats:
    """Per-job timings and counts, passed to ``on_done``."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    """Prompt tokens taken from the session cache instead of being prefilled."""
    new_tokens: int = 0
    """Generated tokens, excluding the stop token."""
    queue_ms: float = 0.0
    """From ``submitted_at`` to the start of this job's prefill."""
    prefill_ms: float = 0.0
    ttft_ms: float = 0.0
    """From ``submitted_at`` to the first generated token."""
    decode_ms: float = 0.0
    """From the first generated token to the last."""
    total_ms: float = 0.0
    batch_size: int = 1
    """Largest number of rows decoded together while this job ran."""
    finish_reason: str = ""
    """``stop`` (a stop token), ``length`` (max_new_tokens), ``repetition``, ``cancelled``, ``error``."""
    adapter: str | None = None

    @property
    def decode_tok_s(self) -> float:
        return (
            (self.new_tokens - 1) / (self.decode_ms / 1000)
            if self.new_tokens > 1 and self.decode_ms > 0
            else 0.0
        )

    def as_dict(self) -> dict[str, int | float | str | None]:
        out = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        out["decode_tok_s"] = self.decode_tok_s
        return out


def _noop(*_: object) -> None:
    return None


def _never() -> bool:
    return False


@dataclass(slots=True)
class GenJob:
    """One generation request. Callbacks run in the worker thread: keep them quick and non-blocking."""

    input_ids: list[int]
    adapter_name: str | None = None
    """A peft adapter of the model; None or ``"__base__"`` = the base model."""
    max_new_tokens: int = 160
    eos_token_ids: Sequence[int] | None = None
    """Stop tokens; None = the tokenizer's (``<|im_end|>``, ``<|endoftext|>``, eos)."""
    session_id: str | None = None
    """Reuse and update this conversation's KV cache (see ``engine.sessions``)."""
    on_token: Callable[[str], None] = _noop
    """Receives text deltas; never a split multi-byte character. Concatenated: the final text."""
    on_done: Callable[[list[int], GenStats], None] = _noop
    """Generated ids (without the stop token) and stats; also called for a cancelled job."""
    on_error: Callable[[BaseException], None] = _noop
    """An ``engine.errors.EngineError``; then no ``on_done``."""
    is_cancelled: Callable[[], bool] = _never
    """Polled before prefill and every decode step; True stops the job and frees its slot."""
    temperature: float = 0.0
    """0 = greedy (the default)."""
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_on_repeat: int = 0
    """End the answer when it repeats an n-gram of *itself* this long (finish reason ``repetition``;
    see ``engine.detokenize.RepetitionStop``). 0 = off."""
    logits_processor: Callable[[list[int], torch.Tensor], torch.Tensor] | None = None
    """``(ids so far, float32 next-token scores) -> scores`` before the choice: ban tokens, constrain, inspect."""
    seed: int | None = None
    submitted_at: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class DecodeRow:
    """One running job."""

    job: GenJob
    prompt: list[int]
    eos: frozenset[int]
    max_new: int
    adapter: str
    detok: IncrementalDetokenizer
    stats: GenStats
    stop: RepetitionStop
    generated: list[int] = field(default_factory=list)
    pos: int = 0
    """Tokens of this row in the cache = the column (and position id) of the next token fed."""
    rng: torch.Generator | None = None
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    done: bool = False

    def repeats(self) -> bool:
        """Whether the newest token completed an n-gram the answer already contained (then remember it)."""
        return self.stop.repeats(self.generated)

    @property
    def reach(self) -> int:
        """Cache columns this row may still need."""
        return self.pos + self.max_new - len(self.generated) + 1


class DecodeBatch:
    """The rows decoding together and their shared cache (every row's columns start at 0)."""

    def __init__(self) -> None:
        self.rows: list[DecodeRow] = []
        self.cache: GrowCache | None = None

    def add(self, joined: list[tuple[DecodeRow, GrowCache]]) -> None:
        """Append rows, each with its own prefilled one-row cache."""
        if self.cache is None and len(joined) == 1:
            self.rows, self.cache = [joined[0][0]], joined[0][1]
            return
        rows = self.rows + [row for row, _ in joined]
        caches = ([self.cache] if self.cache is not None else []) + [cache for _, cache in joined]
        capacity = max(row.reach for row in rows)
        self.cache = GrowCache.stack(caches, capacity, max(row.pos for row in rows))
        self.rows = rows

    def remove(self, indices: list[int]) -> None:
        drop = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in drop]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = None
            return
        self.cache.keep_rows(keep, max(row.pos for row in self.rows))

    def prepare_step(self, device: torch.device) -> torch.Tensor | None:
        """Point the cache at each row's next column; the attention mask (None when no row is shorter)."""
        positions = [row.pos for row in self.rows]
        width = max(positions) + 1
        columns_of_rows = self.cache.decode_at(positions, device)
        if min(positions) + 1 == width:
            return None
        columns = torch.arange(width, device=device)
        return (columns.unsqueeze(0) <= columns_of_rows.unsqueeze(1)).reshape(len(positions), 1, 1, width)

    def row_tensors(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of row ``i``'s keys/values (copy them before keeping them)."""
        return self.cache.row_tensors(i, self.rows[i].pos)
