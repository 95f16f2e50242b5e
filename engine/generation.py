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

What the tests check: in float32, row i of a batch gives exactly the tokens of job i run alone, and
``transformers.generate``'s; a session follow-up equals recomputing the full prompt; streamed deltas
concatenate to the final text. In bfloat16 the CPU matmul kernels round a row differently depending on
how many rows share the call, so a near-tie can flip: batched and alone agree to rounding, not bit for bit.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache

from engine.errors import AdapterError, EngineError, GenerationError, InvalidRequest
from engine.kv_cache import ATTENTION_NAME, GrowCache, attention_implementation
from engine.sessions import SessionStore, cache_from_tensors

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
"""peft's name for "no adapter" in a mixed batch."""
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


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
    """``stop`` (a stop token), ``length`` (max_new_tokens), ``cancelled``."""
    adapter: str | None = None

    @property
    def decode_tok_s(self) -> float:
        return (
            (self.new_tokens - 1) / (self.decode_ms / 1000)
            if self.new_tokens > 1 and self.decode_ms > 0
            else 0.0
        )

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        out["decode_tok_s"] = self.decode_tok_s
        return out


def _noop(*_: Any) -> None:
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
    the prompt is exempt: quoting the rules is the point). 0 = off. Small models fall into loops ("The
    answer is: ... The answer is: ..."); banning the repeat instead made them misspell their way around it."""
    logits_processor: Callable[[list[int], torch.Tensor], torch.Tensor] | None = None
    """``(ids so far, float32 next-token scores) -> scores`` before the choice: ban tokens, constrain, inspect."""
    seed: int | None = None
    submitted_at: float = field(default_factory=time.perf_counter)


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of generated ids, exactly as the streamed deltas add up to."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without splitting a UTF-8 character.

    Byte-level BPE tokens can end mid-character; such text decodes to U+FFFD, so the delta is held back
    until the character completes. Only a short window of recent tokens is decoded each step.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # window start: a token boundary where the text was complete
        self._read = 0  # end of the tokens already turned into text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = decode_text(self._tokenizer, self.ids[self._prefix : self._read])
        window_text = decode_text(self._tokenizer, self.ids[self._prefix :])
        if len(window_text) <= len(prefix_text) or window_text.endswith("\ufffd"):
            return ""
        delta = window_text[len(prefix_text) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta

    def finish(self) -> str:
        """What is still held back (an incomplete character at the very end decodes as U+FFFD)."""
        full = decode_text(self._tokenizer, self.ids)
        delta = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text += delta
        return delta


# ---- rows and the batch ----


@dataclass(slots=True)
class _Row:
    job: GenJob
    prompt: list[int]
    eos: frozenset[int]
    max_new: int
    adapter: str
    detok: IncrementalDetokenizer
    stats: GenStats
    generated: list[int] = field(default_factory=list)
    pos: int = 0
    """Tokens of this row in the cache = the column (and position id) of the next token fed."""
    rng: torch.Generator | None = None
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    done: bool = False
    ngrams: set[tuple[int, ...]] | None = None
    """With ``stop_on_repeat`` n: the answer's n-grams so far."""

    def repeats(self) -> bool:
        """Whether the newest token completed an n-gram the answer already contained (then remember it)."""
        n = self.job.stop_on_repeat
        if self.ngrams is None or len(self.generated) < n:
            return False
        gram = tuple(self.generated[-n:])
        if gram in self.ngrams:
            return True
        self.ngrams.add(gram)
        return False

    @property
    def reach(self) -> int:
        """Cache columns this row may still need."""
        return self.pos + self.max_new - len(self.generated) + 1


class _Batch:
    """The rows decoding together and their shared cache (rows start at column 0, see above)."""

    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.rows: list[_Row] = []
        self.cache: GrowCache | None = None

    def add(self, joined: list[tuple[_Row, GrowCache]]) -> None:
        """Append rows, each with its own prefilled one-row cache."""
        if self.cache is None and len(joined) == 1:
            self.rows, self.cache = [joined[0][0]], joined[0][1]
            return
        rows = self.rows + [row for row, _ in joined]
        capacity = max(row.reach for row in rows)
        width = max(row.pos for row in rows)
        cache = GrowCache(self.n_layers)
        for li, layer in enumerate(cache.layers):
            sources = [(self.cache.layers[li], len(self.rows))] if self.cache is not None else []
            sources += [(c.layers[li], 1) for _, c in joined]
            ref = sources[0][0]
            shape = (len(rows), ref.keys.shape[1], capacity, ref.keys.shape[3])
            keys, values = ref.keys.new_zeros(shape), ref.values.new_zeros(shape)
            r = 0
            for source, n in sources:
                keys[r : r + n, :, : source._len] = source.keys
                values[r : r + n, :, : source._len] = source.values
                r += n
            layer.adopt(keys, values, width)
        self.rows, self.cache = rows, cache

    def remove(self, indices: list[int]) -> None:
        drop = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in drop]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = None
            return
        index = torch.tensor(keep, device=self.cache.layers[0].keys.device)
        width = max(row.pos for row in self.rows)
        for layer in self.cache.layers:
            layer.adopt(layer._kbuf.index_select(0, index), layer._vbuf.index_select(0, index), width)

    def prepare_step(self, device: torch.device) -> torch.Tensor | None:
        """Point the cache at each row's next column; the attention mask (None when no row is shorter)."""
        positions = [row.pos for row in self.rows]
        width = max(positions) + 1
        cursor = self.cache.cursor
        cursor.positions = torch.tensor(positions, device=device)
        cursor.rows = torch.arange(len(positions), device=device)
        cursor.width = width
        if min(positions) + 1 == width:
            return None
        columns = torch.arange(width, device=device)
        return (columns.unsqueeze(0) <= cursor.positions.unsqueeze(1)).reshape(len(positions), 1, 1, width)

    def row_tensors(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of row ``i``'s keys/values (copy them before keeping them)."""
        n = self.rows[i].pos
        return [(layer._kbuf[i : i + 1, :, :n], layer._vbuf[i : i + 1, :, :n]) for layer in self.cache.layers]


class Generator:
    """Runs ``GenJob`` batches on one model. Not re-entrant: one ``run_batch`` at a time (the worker thread)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None = None,
        sessions: SessionStore | None = None,
        *,
        max_batch_size: int = 8,
    ) -> None:
        self._registry = None
        if hasattr(model, "peft_model") and hasattr(model, "loaded"):  # an engine.adapters.AdapterRegistry
            self._registry, tokenizer = model, tokenizer or model.loaded.tokenizer
            model = model.model
        elif hasattr(model, "tokenizer") and hasattr(model, "model"):  # an engine.model_loader.LoadedModel
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

    def _use_model(self, model: Any) -> None:
        self.model = model
        self.is_peft = _is_peft(model)
        self.device = _device_of(model)
        self._config = model.config

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
        batch = _Batch(self.n_layers)
        while True:
            free = self.max_batch_size - len(batch.rows)
            if admit is not None and free > len(pending):
                pending.extend(admit(free - len(pending)))
            joined: list[tuple[_Row, GrowCache]] = []
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

    def _start(self, job: GenJob) -> tuple[_Row, GrowCache] | None:
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
            self._store_session(row, [(layer.keys, layer.values) for layer in cache.layers])
            return None
        return row, cache

    def _new_row(self, job: GenJob, stats: GenStats) -> _Row:
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
        return _Row(
            job=job,
            prompt=[int(t) for t in job.input_ids],
            eos=frozenset(job.eos_token_ids) if job.eos_token_ids is not None else self.default_eos,
            max_new=min(job.max_new_tokens, self.max_positions - len(job.input_ids)),
            adapter=adapter,
            detok=IncrementalDetokenizer(self.tokenizer),
            stats=stats,
            rng=rng,
            ngrams=set() if job.stop_on_repeat > 0 else None,
        )

    def _session_prefix(self, row: _Row) -> tuple[DynamicCache | None, int]:
        if self.sessions is None or row.job.session_id is None:
            return None, 0
        return self.sessions.prepare(row.job.session_id, row.prompt, tag=row.adapter)

    def _store_session(self, row: _Row, tensors: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
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

    def _step(self, batch: _Batch) -> list[int]:
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

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
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

    def _accept(self, row: _Row, token: int) -> None:
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

    def _complete(self, row: _Row) -> None:
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

    def _fail(self, row: _Row, exc: BaseException) -> None:
        if row.done:
            return
        row.done = True
        row.stats.finish_reason = "error"
        log.warning("generation job failed: %r", exc)
        _safe_call(row.job.on_error, _as_engine_error(exc))


# ---- helpers ----


_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")


def cut_repeated_tail(text: str, repeated: str) -> str:
    """The answer without the loop it fell into: drop the repeated run (``repeated``, the decoded n-gram
    that stopped it) and the unfinished sentence it started, back to the last sentence end.

    Keeps ``text`` unchanged when it does not end with the run, or when no sentence ends before it.
    """
    body = text.rstrip()
    run = repeated.strip()
    if not run or not body.endswith(run):
        return text
    body = body[: len(body) - len(run)]
    ends = [m.end() for m in _SENTENCE_END.finditer(body)]
    return body[: ends[-1]].rstrip() if ends else text


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _device_of(model: Any) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return next(model.parameters()).device


def _stop_ids(tokenizer: Any, model: Any) -> set[int]:
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
