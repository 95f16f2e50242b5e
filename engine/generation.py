"""The generation core: batched, streaming greedy decoding over mixed LoRA adapters, with KV-cache sessions.

``Generator.run_batch(jobs)`` runs in the engine's worker thread. Each job is prefilled on its own (reusing
its session's cached prefix when it has one), then all jobs decode together, one token per step, in one
batch whose rows may each use a different LoRA adapter (peft's ``adapter_names``). Decoding one token is
bound by reading the weights, not by arithmetic, so a batch of rows costs little more per step than one
row: that is where the throughput comes from. A row that finishes (stop token, length, cancellation)
leaves the batch at once, and waiting jobs take its slot (continuous batching).

Why a hand-written loop rather than ``model.generate``: per-row streaming, cancellation, session and
plain rows together, rows joining and leaving mid-batch, and per-job timings need control of each step.

Two things transformers does slowly on CPU are replaced for decoding (``engine.kv_cache``): the KV cache is
preallocated and written in place, and attention for a single query is two matmuls and a softmax.

The pieces: ``engine.decode_batch`` (the job, its stats, the rows and the batch), ``engine.detokenize``
(ids to streamed text, the loop stop), ``engine.kv_cache`` (the cache and its attention). Their public
names are importable from here too.

What the tests check: in float32, row i of a batch gives exactly the tokens of job i run alone, and
``transformers.generate``'s; a session follow-up equals recomputing the full prompt; streamed deltas
concatenate to the final text. In bfloat16 the CPU matmul kernels round a row differently depending on
how many rows share the call, so a near-tie can flip: batched and alone agree to rounding, not bit for bit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache

from engine.adapters import AdapterRegistry
from engine.decode_batch import DecodeBatch, DecodeRow, GenJob, GenStats
from engine.detokenize import (
    IncrementalDetokenizer,
    RepetitionStop,
    cut_repeated_tail,
    decode_text,
)
from engine.errors import AdapterError, EngineError, GenerationError, InvalidRequest
from engine.kv_cache import ATTENTION_NAME, GrowCache, attention_implementation
from engine.model_loader import LoadedModel
from engine.sessions import SessionStore, cache_from_tensors

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

__all__ = [
    "BASE_ADAPTER",
    "STOP_TOKENS",
    "GenJob",
    "GenStats",
    "Generator",
    "IncrementalDetokenizer",
    "RepetitionStop",
    "cut_repeated_tail",
    "decode_text",
]

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
"""peft's name for "no adapter" in a mixed batch."""
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


class Generator:
    """Runs ``GenJob`` batches on one model. Not re-entrant: one ``run_batch`` at a time (the worker thread)."""

    def __init__(
        self,
        model: AdapterRegistry | LoadedModel | nn.Module,
        tokenizer: PreTrainedTokenizerBase | None = None,
        sessions: SessionStore | None = None,
        *,
        max_batch_size: int = 8,
    ) -> None:
        """``model``: the model itself (a transformers model or a PeftModel), a ``LoadedModel`` (its
        tokenizer is the default), or an ``AdapterRegistry``, followed to the PeftModel it wraps the
        model in when it registers its first adapter."""
        self._registry: AdapterRegistry | None = None
        if isinstance(model, AdapterRegistry):
            self._registry, tokenizer = model, tokenizer or model.loaded.tokenizer
            model = model.model
        elif isinstance(model, LoadedModel):
            tokenizer = tokenizer or model.tokenizer
            model = model.model
        if tokenizer is None:
            raise ValueError("a tokenizer is needed")
        self.tokenizer = tokenizer
        self.sessions = sessions
        self.max_batch_size = max(1, max_batch_size)
        self._use_model(model)
        text_config = self._config.get_text_config()
        self.n_layers = int(text_config.num_hidden_layers)
        self.max_positions = int(getattr(text_config, "max_position_embeddings", 0) or 1 << 30)
        # On CPU, decode attention is our matmul version (engine.kv_cache.decode_attention), and its float32 scores
        # read the keys in float32: keep them so in the cache (lossless, +50% cache memory) rather than
        # converting the whole cache on every step. Elsewhere (CUDA) SDPA stays, with model-dtype keys.
        self._decode_attention = self.device.type == "cpu"
        dtype = next(model.parameters()).dtype
        self._key_dtype = (
            torch.float32 if self._decode_attention and dtype in (torch.bfloat16, torch.float16) else None
        )
        self.default_eos = frozenset(_stop_ids(tokenizer, model))
        self._lock = threading.Lock()

    def _use_model(self, model: nn.Module) -> None:
        self.model = model
        self.is_peft = _is_peft(model)
        self.device = _device_of(model)
        self._config: PretrainedConfig = model.config

    # ---- public API ----

    def adapters(self) -> set[str]:
        """Adapter names rows may use (the PeftModel's adapters), besides ``None``/``"__base__"``."""
        return set(getattr(self.model, "peft_config", None) or {}) if self.is_peft else set()

    def run_batch(
        self, jobs: Sequence[GenJob], admit: Callable[[int], Sequence[GenJob]] | None = None
    ) -> None:
        """Run ``jobs`` to completion, at most ``max_batch_size`` rows at a time; settle each job exactly once.

        ``admit(free_slots)``, when given, is polled between decode steps for more jobs to join the running
        batch. A job that fails on its own (unknown adapter, prompt too long, error in its prefill) gets
        ``on_error`` and the others go on. An error in a shared decode step fails every row of the batch
        and is re-raised: the worker treats it as a crash (the model may be in a bad state).
        """
        with self._lock:
            if self._registry is not None and self._registry.model is not self.model:
                self._use_model(self._registry.model)  # the registry wraps the model on its first adapter
            attention = ATTENTION_NAME if self._decode_attention else None
            with torch.inference_mode(), attention_implementation(self._config, attention):
                self._run(list(jobs), admit)

    def _run(self, pending: list[GenJob], admit: Callable[[int], Sequence[GenJob]] | None) -> None:
        """Continuous batching: fill free slots (prefill each newcomer alone), decode one step, retire."""
        batch = DecodeBatch()
        while True:
            free = self.max_batch_size - len(batch.rows)
            if admit is not None and free > len(pending):
                pending.extend(admit(free - len(pending)))
            joined: list[tuple[DecodeRow, GrowCache]] = []
            while pending and len(batch.rows) + len(joined) < self.max_batch_size:
                started = self._start(pending.pop(0))
                if started is not None:
                    joined.append(started)
            if joined:
                batch.add(joined)
            if not batch.rows:
                if pending:
                    continue
                return
            try:
                next_tokens = self._step(batch)
            except Exception as exc:
                for row in batch.rows:
                    self._fail(row, exc)
                raise
            for row, token in zip(batch.rows, next_tokens, strict=True):
                row.pos += 1
                row.stats.batch_size = max(row.stats.batch_size, len(batch.rows))
                self._accept(row, token)
            finished = [i for i, row in enumerate(batch.rows) if row.done]
            if finished:
                for i in finished:
                    self._store_session(batch.rows[i], batch.row_tensors(i))
                batch.remove(finished)

    def generate(
        self, prompt: Sequence[int] | Sequence[dict[str, str]] | str, **job_fields: Any
    ) -> tuple[str, list[int], GenStats]:
        """Run one job synchronously: ``(text, generated ids, stats)``; raises its error.

        ``prompt``: token ids, chat messages (rendered with the chat template) or raw text.
        ``job_fields``: any ``GenJob`` field (``adapter_name``, ``max_new_tokens``, ``session_id``, ...).
        """
        result: dict[str, Any] = {}
        pieces: list[str] = []
        job = GenJob(
            input_ids=self.encode(prompt),
            on_token=pieces.append,
            on_done=lambda ids, stats: result.update(ids=ids, stats=stats),
            on_error=lambda exc: result.update(error=exc),
            **job_fields,
        )
        self.run_batch([job])
        if "error" in result:
            raise result["error"]
        return "".join(pieces), result["ids"], result["stats"]

    def generate_text(self, prompt: Sequence[int] | Sequence[dict[str, str]] | str, **job_fields: Any) -> str:
        """The answer text only (tests, CLI)."""
        return self.generate(prompt, **job_fields)[0]

    def encode(self, prompt: Sequence[int] | Sequence[dict[str, str]] | str) -> list[int]:
        from engine.prompts import encode_messages

        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        items = list(prompt)
        if items and isinstance(items[0], dict):
            return encode_messages(self.tokenizer, items)  # type: ignore[arg-type]
        return [int(i) for i in items]  # type: ignore[arg-type]

    # ---- one job: validate, reuse its session, prefill, first token ----

    def _start(self, job: GenJob) -> tuple[DecodeRow, GrowCache] | None:
        """Prefill one job alone; returns it with its cache, or None when it already finished or failed."""
        started = time.perf_counter()
        stats = GenStats(prompt_tokens=len(job.input_ids), queue_ms=(started - job.submitted_at) * 1000)
        try:
            row = self._new_row(job, stats)
        except Exception as exc:
            _safe_call(job.on_error, _as_engine_error(exc))
            return None
        if _safe_call(job.is_cancelled, default=True):
            row.stats.finish_reason = "cancelled"
            self._complete(row)
            return None
        try:
            prefix, reused = self._session_prefix(row)
            capacity = len(row.prompt) + row.max_new + 1
            cache = (
                GrowCache.from_prefix(prefix, capacity, self._key_dtype)
                if prefix is not None
                else GrowCache(self.n_layers, capacity, self._key_dtype)
            )
            del prefix
            fresh = torch.tensor([row.prompt[reused:]], device=self.device)
            positions = torch.arange(reused, len(row.prompt), device=self.device).unsqueeze(0)
            logits = self._forward(fresh, positions, None, cache, [row.adapter])
            token = self._choose(logits, [row])[0]
        except Exception as exc:
            self._fail(row, exc)
            return None
        stats.reused_tokens = reused
        stats.prefill_ms = (time.perf_counter() - started) * 1000
        row.pos = len(row.prompt)
        self._accept(row, token)
        if row.done:  # finished at once (stop token, max_new_tokens=1, cancelled, on_token failed)
            self._store_session(row, cache.row_tensors(0, row.pos))
            return None
        return row, cache

    def _new_row(self, job: GenJob, stats: GenStats) -> DecodeRow:
        if not job.input_ids:
            raise InvalidRequest("The prompt is empty.")
        if len(job.input_ids) >= self.max_positions:
            raise InvalidRequest(
                f"That conversation is too long for the model ({len(job.input_ids)} tokens, limit "
                f"{self.max_positions}). Start a new conversation or ask a shorter question."
            )
        if job.max_new_tokens < 1:
            raise InvalidRequest("max_new_tokens must be at least 1.")
        adapter = job.adapter_name or BASE_ADAPTER
        if adapter != BASE_ADAPTER and adapter not in self.adapters():
            raise AdapterError(
                adapter, "not loaded in the model" if self.is_peft else "the model has no adapters"
            )
        stats.adapter = None if adapter == BASE_ADAPTER else adapter
        rng = None
        if job.temperature > 0:
            rng = torch.Generator(device="cpu")
            rng.manual_seed(job.seed if job.seed is not None else int(torch.randint(1 << 62, ()).item()))
        return DecodeRow(
            job=job,
            prompt=[int(t) for t in job.input_ids],
            eos=frozenset(job.eos_token_ids) if job.eos_token_ids is not None else self.default_eos,
            max_new=min(job.max_new_tokens, self.max_positions - len(job.input_ids)),
            adapter=adapter,
            detok=IncrementalDetokenizer(self.tokenizer),
            stats=stats,
            rng=rng,
            stop=RepetitionStop(job.stop_on_repeat),
        )

    def _session_prefix(self, row: DecodeRow) -> tuple[DynamicCache | None, int]:
        if self.sessions is None or row.job.session_id is None:
            return None, 0
        return self.sessions.prepare(row.job.session_id, row.prompt, tag=row.adapter)

    def _store_session(self, row: DecodeRow, tensors: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep the row's cache: its prompt and every generated token but the last (never fed back)."""
        if self.sessions is None or row.job.session_id is None or row.stats.finish_reason == "error":
            return
        ids = (row.prompt + row.generated)[: row.pos]
        try:
            # Sessions keep keys in the model's dtype (the float32 keys of the batch cache are exact copies).
            tensors = [(keys.to(values.dtype), values) for keys, values in tensors]
            self.sessions.store(row.job.session_id, ids, cache_from_tensors(tensors), tag=row.adapter)
        except Exception:  # losing a session costs a slower next turn, never this answer
            log.exception("storing session %r failed", row.job.session_id)

    # ---- one decode step for the whole batch ----

    def _step(self, batch: DecodeBatch) -> list[int]:
        rows = batch.rows
        tokens = torch.tensor([[row.generated[-1]] for row in rows], device=self.device)
        positions = torch.tensor([[row.pos] for row in rows], device=self.device)
        mask = batch.prepare_step(self.device)
        logits = self._forward(tokens, positions, mask, batch.cache, [row.adapter for row in rows])
        return self._choose(logits, rows)

    def _forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Cache,
        adapters: list[str],
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {"adapter_names": adapters} if self.is_peft else {}
        out = self.model(
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1, :]

    def _choose(self, logits: torch.Tensor, rows: list[DecodeRow]) -> list[int]:
        """Next token per row: greedy for the whole batch in one op; sampling and penalties row by row."""
        chosen = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            job = row.job
            if job.temperature <= 0 and job.repetition_penalty == 1.0 and job.logits_processor is None:
                continue
            scores = logits[i].float()
            if job.logits_processor is not None:
                scores = job.logits_processor(row.prompt + row.generated, scores)
            if job.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(row.prompt + row.generated)), device=scores.device)
                picked = scores[seen]
                scores[seen] = torch.where(
                    picked > 0, picked / job.repetition_penalty, picked * job.repetition_penalty
                )
            if job.temperature <= 0:
                chosen[i] = int(scores.argmax())
                continue
            probs = torch.softmax(scores / job.temperature, dim=-1).cpu()
            if job.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(0) - sorted_probs < job.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            chosen[i] = int(torch.multinomial(probs, 1, generator=row.rng))
        return chosen

    # ---- one row's bookkeeping ----

    def _accept(self, row: DecodeRow, token: int) -> None:
        """Take the row's next token: stop on a stop token, else stream it; then the length limit and
        cancellation."""
        if row.done:
            return
        now = time.perf_counter()
        if not row.generated:
            row.first_token_at = now
            row.stats.ttft_ms = (now - row.job.submitted_at) * 1000
        row.last_token_at = now
        row.generated.append(token)
        if token in row.eos:
            row.stats.finish_reason = "stop"
        else:
            delta = row.detok.push(token)
            if delta:
                try:
                    row.job.on_token(delta)
                except Exception as exc:  # the consumer is broken or gone: stop this row only
                    self._fail(row, exc)
                    return
            if row.repeats():
                row.stats.finish_reason = "repetition"
            elif len(row.generated) >= row.max_new:
                row.stats.finish_reason = "length"
            elif _safe_call(row.job.is_cancelled, default=True):
                row.stats.finish_reason = "cancelled"
        if row.stats.finish_reason:
            self._complete(row)

    def _complete(self, row: DecodeRow) -> None:
        row.done = True
        tail = row.detok.finish()
        if tail:
            _safe_call(row.job.on_token, tail)
        ids = row.generated[:-1] if row.stats.finish_reason == "stop" else list(row.generated)
        row.stats.new_tokens = len(ids)
        if row.first_token_at:
            row.stats.decode_ms = (row.last_token_at - row.first_token_at) * 1000
        row.stats.total_ms = (time.perf_counter() - row.job.submitted_at) * 1000
        _safe_call(row.job.on_done, ids, row.stats)

    def _fail(self, row: DecodeRow, exc: BaseException) -> None:
        if row.done:
            return
        row.done = True
        row.stats.finish_reason = "error"
        log.warning("generation job failed: %r", exc)
        _safe_call(row.job.on_error, _as_engine_error(exc))


# ---- helpers ----


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _device_of(model: nn.Module) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return next(model.parameters()).device


def _stop_ids(tokenizer: PreTrainedTokenizerBase, model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in STOP_TOKENS if t in vocab)
    return ids


def _as_engine_error(exc: BaseException) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    error = GenerationError(f"generation failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def _safe_call(callback: Callable[..., Any], *args: Any, default: Any = None) -> Any:
    """Run a job callback; a raising callback is logged and never takes the batch down."""
    try:
        return callback(*args)
    except Exception:
        log.exception("a generation callback raised")
        return default
