"""Second-stage re-ranking: a cross-encoder reads the question and each top candidate together.

A bi-encoder embeds the question once and compares it with vectors made without seeing the question; a
cross-encoder attends across both texts, which is what a situation ("Player A is eliminated while ...")
needs to meet the abstract rule that decides it. It costs one forward pass per candidate, so it runs only
on the first stage's top ``depth`` candidates, under its own latency budget.

No cross-encoder ships with weights offline, so :class:`CrossEncoder` is all-MiniLM-L6-v2's transformer
(optionally cut to its first ``layers`` layers, for speed) with a linear head on the mean-pooled tokens,
trained here by ``hexcore train --retriever`` (:mod:`training.retriever`) and kept in the retriever store.
Without a trained version there is no re-ranking (the first-stage order is kept).

Files of a version: ``model.safetensors`` (encoder + head), ``config.json`` (the encoder's), the tokenizer
files, and ``reranker.json`` (layers, max_length).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RERANKER_FILE = "reranker.json"
WEIGHTS_FILE = "model.safetensors"


def _torch():
    import torch

    return torch


class CrossEncoder:
    """Encoder + linear head scoring (query, passage) pairs; a ``torch.nn.Module`` built lazily."""

    def __init__(self, model, tokenizer, max_length: int = 160) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._lock = threading.Lock()

    @classmethod
    def from_base(cls, base_path: Path, layers: int | None = None, max_length: int = 160) -> CrossEncoder:
        """A fresh cross-encoder from a sentence-transformers folder (its transformer, a new head)."""
        from transformers import AutoModel, AutoTokenizer

        encoder = AutoModel.from_pretrained(str(base_path))
        if layers is not None and layers < encoder.config.num_hidden_layers:
            encoder.encoder.layer = encoder.encoder.layer[:layers]
            encoder.config.num_hidden_layers = layers
        return cls(_ScoringModel(encoder), AutoTokenizer.from_pretrained(str(base_path)), max_length)

    @classmethod
    def load(cls, folder: Path) -> CrossEncoder:
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        settings = json.loads((folder / RERANKER_FILE).read_text(encoding="utf-8"))
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)))
        model = _ScoringModel(encoder)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        model.eval()
        return cls(model, AutoTokenizer.from_pretrained(str(folder)), int(settings["max_length"]))

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        self.model.encoder.config.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        settings = {"max_length": self.max_length, "layers": self.model.encoder.config.num_hidden_layers}
        (folder / RERANKER_FILE).write_text(json.dumps(settings), encoding="utf-8")

    def features(self, queries: Sequence[str], passages: Sequence[str]):
        return self.tokenizer(
            list(queries),
            list(passages),
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
        )

    def logits(self, queries: Sequence[str], passages: Sequence[str]):
        """Raw scores with gradients (training)."""
        return self.model(**self.features(queries, passages))

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """One score per passage for ``query`` (higher = more relevant); thread-safe."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        torch = _torch()
        with self._lock, torch.inference_mode():
            return self.logits([query] * len(passages), passages).float().numpy()


def _scoring_model_class():
    torch = _torch()

    class ScoringModel(torch.nn.Module):
        def __init__(self, encoder) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = torch.nn.Linear(encoder.config.hidden_size, 1)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            out = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(out.dtype)
            pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(pooled).squeeze(-1)

    return ScoringModel


def _ScoringModel(encoder):  # noqa: N802 - a class factory: torch is imported only when a model is built
    return _scoring_model_class()(encoder)


class Reranker:
    """Re-orders a first-stage ranking's top ``depth`` by cross-encoder score, under ``budget_ms``.

    The final score of a re-ranked candidate is its cross-encoder score plus ``prior`` times its
    first-stage reciprocal rank, so a near tie keeps the first stage's order. Candidates the user named
    (the ``exact`` stage: a rule number, a card) stay first. When the scoring would not fit the budget
    (its recent median says so) it is skipped and the first-stage order returned.
    """

    def __init__(
        self,
        encoder: CrossEncoder,
        depth: int = 12,
        budget_ms: float = 150.0,
        prior: float = 1.0,
        probe_interval_s: float = 5.0,
    ):
        self.encoder = encoder
        self.depth = depth
        self.budget_ms = budget_ms
        self.prior = prior
        self.probe_interval_s = probe_interval_s
        self._recent: list[float] = []
        self._last_probe = time.monotonic()
        self._lock = threading.Lock()

    def expected_ms(self) -> float:
        with self._lock:
            return float(np.median(self._recent)) if self._recent else 0.0

    def fits(self, elapsed_ms: float) -> bool:
        """Within budget by its recent cost; else still once every ``probe_interval_s`` (while the budget is
        not spent), so one slow call on a busy machine does not switch re-ranking off for good."""
        if elapsed_ms + self.expected_ms() <= self.budget_ms:
            return True
        now = time.monotonic()
        with self._lock:
            if elapsed_ms < self.budget_ms and now - self._last_probe >= self.probe_interval_s:
                self._last_probe = now
                return True
        return False

    def rerank(self, query: str, results: list, text_of) -> list:
        """``results`` (RetrievalResult, best first) re-ordered; ``text_of(passage)`` gives its index text."""
        from knowledge.models import RetrievalResult

        head = [r for r in results[: self.depth] if "exact" not in r.sources]
        if len(head) < 2:
            return results
        pinned = [r for r in results[: self.depth] if "exact" in r.sources]
        start = time.perf_counter()
        scores = self.encoder.score(query, [text_of(r.passage) for r in head])
        with self._lock:
            self._recent = [*self._recent[-63:], (time.perf_counter() - start) * 1000.0]
        final = [float(s) + self.prior / (1.0 + i) for i, s in enumerate(scores)]
        order = sorted(range(len(head)), key=lambda i: -final[i])
        reranked = [RetrievalResult(head[i].passage, final[i], head[i].sources | {"rerank"}) for i in order]
        return [*pinned, *reranked, *results[self.depth :]]


def load_reranker(folder: Path | None, depth: int, budget_ms: float, prior: float) -> Reranker | None:
    """The trained re-ranker in ``folder``, or None (with a warning) when it cannot be loaded."""
    if folder is None:
        return None
    try:
        return Reranker(CrossEncoder.load(folder), depth=depth, budget_ms=budget_ms, prior=prior)
    except Exception as exc:  # noqa: BLE001 - damaged files must degrade to no re-ranking, never a traceback
        log.warning("could not load the re-ranker in %s (%s): searching without re-ranking", folder, exc)
        return None
