"""The router: a small trained classifier that picks one or more experts for a question.

Features: the sentence embedding (all-MiniLM-L6-v2, shared with retrieval), which captures the topic, plus
hashed word uni- and bigrams, which capture the intent cues an embedding blurs ("should I", "last game",
"I'm new"). One linear layer -> an independent sigmoid per expert (multi-label, so compound questions can
select several). A question is also scored clause by
clause ("explain X, and should I Y?"): an expert that one clause clearly asks for is selected even if the
whole-question score dilutes it. Per-expert thresholds come from configuration; when no expert clears its
threshold the single best one is used, so a question is never left unrouted.

Trained from ``engine/data/router_examples.jsonl`` (hand-written, kept in the repo). Training takes about a
second; the trained weights are cached under the state directory and retrained when the examples change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from engine.api import Expert
from knowledge.embeddings import Embedder, get_embedder

log = logging.getLogger(__name__)

EXAMPLES_PATH = Path(__file__).parent / "data" / "router_examples.jsonl"
EXPERTS: tuple[Expert, ...] = tuple(Expert)
MAX_EXPERTS = 3
_CLAUSE_SPLIT = re.compile(
    r"\?\s+|(?:,\s*)?\band then\b|,\s*and\b|;\s*|\.\s+(?=[A-Z])|\band (?=(?:what|should|how|is|was|did|which|if|tell|predict|review|teach|explain|work)\b)",
    re.I,
)


@dataclass(frozen=True, slots=True)
class RouterExample:
    text: str
    experts: tuple[Expert, ...]


@dataclass(slots=True)
class RouteDecision:
    experts: list[Expert]
    scores: dict[Expert, float]
    clauses: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RouterMetrics:
    train_size: int
    heldout_size: int
    exact_match: float
    """Share of held-out questions whose selected expert set equals the labelled set."""
    top1: float
    """Share whose best-scoring expert is one of the labelled experts."""

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


def load_examples(path: Path = EXAMPLES_PATH) -> list[RouterExample]:
    examples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        try:
            experts = tuple(Expert(e) for e in row["experts"])
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: unknown expert in {row['experts']}") from exc
        examples.append(RouterExample(row["text"].strip(), experts))
    return examples


def split_heldout(examples: Sequence[RouterExample], share: float = 0.2):
    """Deterministic split by a hash of the text, so it never changes between runs or machines."""
    train, heldout = [], []
    for ex in examples:
        bucket = int(hashlib.sha1(ex.text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (heldout if bucket < share else train).append(ex)
    return train, heldout


def split_clauses(text: str) -> list[str]:
    parts = [p.strip(" ,.?") for p in _CLAUSE_SPLIT.split(text)]
    return [p for p in parts if len(p.split()) >= 2]


HASH_DIM = 2048
_WORD = re.compile(r"[a-z0-9']+")


def lexical_features(texts: Sequence[str], dim: int = HASH_DIM) -> np.ndarray:
    """L2-normalised hashed unigrams and bigrams (crc32, so stable across processes and machines)."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        for gram in [*words, *(f"{a} {b}" for a, b in zip(words, words[1:], strict=False))]:
            out[row, zlib.crc32(gram.encode()) % dim] += 1.0
        norm = np.linalg.norm(out[row])
        if norm:
            out[row] /= norm
    return out


def featurize(embedder: Embedder, texts: Sequence[str]) -> torch.Tensor:
    return torch.from_numpy(np.hstack([embedder.encode(list(texts)), lexical_features(texts)]))


class Router:
    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        embedder: Embedder,
        thresholds: Mapping[Expert, float] | float = 0.5,
        clause_threshold: float = 0.75,
    ) -> None:
        self.weight = weight.float()
        self.bias = bias.float()
        self.embedder = embedder
        if isinstance(thresholds, float | int):
            thresholds = {e: float(thresholds) for e in EXPERTS}
        self.thresholds = {e: float(thresholds.get(e, 0.5)) for e in EXPERTS}
        self.clause_threshold = clause_threshold
        self.metrics: RouterMetrics | None = None

    # -- scoring -----------------------------------------------------------------------------
    def _probs(self, texts: Sequence[str]) -> np.ndarray:
        return torch.sigmoid(featurize(self.embedder, texts) @ self.weight.T + self.bias).numpy()

    def route(self, question: str) -> RouteDecision:
        clauses = split_clauses(question)
        probs = self._probs([question, *clauses]) if len(clauses) > 1 else self._probs([question])
        whole = probs[0]
        scores = {e: float(whole[i]) for i, e in enumerate(EXPERTS)}
        chosen = {e for e in EXPERTS if scores[e] >= self.thresholds[e]}
        for row in probs[1:]:  # an expert one clause clearly asks for
            best = int(row.argmax())
            if row[best] >= self.clause_threshold:
                chosen.add(EXPERTS[best])
                scores[EXPERTS[best]] = max(scores[EXPERTS[best]], float(row[best]))
        if not chosen:
            chosen = {max(scores, key=scores.get)}
        ranked = sorted(chosen, key=lambda e: -scores[e])[:MAX_EXPERTS]
        return RouteDecision(ranked, scores, clauses)

    def evaluate(self, examples: Sequence[RouterExample]) -> tuple[float, float]:
        exact = top1 = 0
        for ex in examples:
            decision = self.route(ex.text)
            exact += set(decision.experts) == set(ex.experts)
            top1 += max(decision.scores, key=decision.scores.get) in ex.experts
        n = max(len(examples), 1)
        return exact / n, top1 / n

    # -- persistence -------------------------------------------------------------------------
    def save(self, directory: Path, data_hash: str = "") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()},
            directory / "router.safetensors",
        )
        meta = {
            "experts": [e.value for e in EXPERTS],
            "embedding_model": self.embedder.model_id,
            "data_hash": data_hash,
            "metrics": self.metrics.to_json() if self.metrics else None,
        }
        tmp = directory / "router.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(directory / "router.json")

    @classmethod
    def load(
        cls, directory: Path, embedder: Embedder, thresholds: Mapping[Expert, float] | float = 0.5
    ) -> Router:
        meta = json.loads((directory / "router.json").read_text())
        if meta["experts"] != [e.value for e in EXPERTS] or meta["embedding_model"] != embedder.model_id:
            raise ValueError(
                f"router in {directory} was trained for other experts or another embedding model"
            )
        tensors = load_file(directory / "router.safetensors")
        router = cls(tensors["weight"], tensors["bias"], embedder, thresholds)
        if meta.get("metrics"):
            router.metrics = RouterMetrics(**meta["metrics"])
        return router


def examples_hash(examples: Sequence[RouterExample]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(f"{ex.text}\t{','.join(ex.experts)}\n".encode())
    return digest.hexdigest()[:16]


def train_router(
    examples: Sequence[RouterExample],
    embedder: Embedder | None = None,
    *,
    thresholds: Mapping[Expert, float] | float = 0.4,
    epochs: int = 400,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
    heldout_share: float = 0.2,
) -> Router:
    """Fit the linear multi-label classifier; metrics are measured on a deterministic held-out split."""
    embedder = embedder or get_embedder()
    train, heldout = split_heldout(examples, heldout_share) if heldout_share > 0 else (list(examples), [])
    x = featurize(embedder, [ex.text for ex in train])
    y = torch.tensor([[float(e in ex.experts) for e in EXPERTS] for ex in train])
    torch.manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], len(EXPERTS))
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = loss_fn(layer(x), y)
        loss.backward()
        optimizer.step()
    router = Router(layer.weight.detach().clone(), layer.bias.detach().clone(), embedder, thresholds)
    if heldout:
        exact, top1 = router.evaluate(heldout)
        router.metrics = RouterMetrics(len(train), len(heldout), exact, top1)
        log.info("router trained on %d examples: held-out exact %.3f, top-1 %.3f", len(train), exact, top1)
    return router


def load_or_train_router(
    state_dir: Path,
    embedder: Embedder | None = None,
    thresholds: Mapping[Expert, float] | float = 0.4,
    examples_path: Path = EXAMPLES_PATH,
) -> Router:
    """The cached router when it matches the current examples, else a freshly trained (and saved) one."""
    embedder = embedder or get_embedder()
    examples = load_examples(examples_path)
    data_hash = examples_hash(examples)
    directory = state_dir / "router"
    try:
        meta = json.loads((directory / "router.json").read_text())
        if meta.get("data_hash") == data_hash:
            return Router.load(directory, embedder, thresholds)
    except (OSError, ValueError, KeyError):
        pass
    router = train_router(examples, embedder, thresholds=thresholds)
    router.save(directory, data_hash)
    return router
