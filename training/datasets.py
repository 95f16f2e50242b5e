"""Per-expert training datasets from three sources, split deterministically into train and validation.

1. The rules (``training.rules_data``): always available, reframed per expert.
2. Collected feedback (rows from the bot: question, answer, experts, citations, score): a helpful answer
   (score > 0) becomes a positive example; an unhelpful one (score < 0) is kept as a *negative*: never
   trained on, but its perplexity is reported so a run that makes bad answers likelier is visible.
   Score 0 (no net vote) is ignored.
3. Files an admin adds: ``<state_dir>/training_data/<expert>/*.jsonl|*.csv`` (format in
   ``training.examples``).

The split hashes each example's group (its rule number for rules-derived examples), so it is the same on
every run and machine, and adding new data never moves an old example across the split. When a size cap
applies, admin and feedback examples are kept first (they are scarce and closest to real use), then
rules-derived ones in hash order.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.api import Expert
from knowledge.models import Citation, Passage, RulesDocument
from training.config import TrainConfig
from training.errors import DatasetError
from training.examples import TrainingExample, assert_trainable, read_examples, write_csv, write_jsonl
from training.rules_data import mixed_rules_examples, rules_examples

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from hexcore.settings import Settings

TRAINING_DATA_DIR = "training_data"


@dataclass(slots=True)
class ExpertDataset:
    expert: str
    train: list[TrainingExample]
    val: list[TrainingExample]
    negatives: list[TrainingExample] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def export(self, directory: Path) -> dict[str, Path]:
        """Write train/val (and negatives) as JSONL and CSV into ``directory``."""
        out = {}
        for name, rows in (("train", self.train), ("val", self.val), ("negatives", self.negatives)):
            if name == "negatives" and not rows:
                continue
            out[f"{name}.jsonl"] = directory / f"{name}.jsonl"
            write_jsonl(out[f"{name}.jsonl"], rows)
            out[f"{name}.csv"] = directory / f"{name}.csv"
            write_csv(out[f"{name}.csv"], rows)
        return out


def split_bucket(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_examples(
    examples: Iterable[TrainingExample], val_share: float
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Deterministic split by a hash of each example's group: same answer on every run and machine."""
    train, val = [], []
    for example in examples:
        (val if split_bucket(example.split_key) < val_share else train).append(example)
    return train, val


def _priority(example: TrainingExample) -> tuple[int, float]:
    rank = 0 if example.source.startswith("admin") else 1 if example.source.startswith("feedback") else 2
    return rank, split_bucket(example.uid)


def cap(examples: Sequence[TrainingExample], limit: int | None) -> list[TrainingExample]:
    if limit is None or len(examples) <= limit:
        return list(examples)
    return sorted(examples, key=_priority)[:limit]


# --- feedback --------------------------------------------------------------------------------------------


def _citation_context(citations: Sequence[Any], doc: RulesDocument | None) -> str:
    from knowledge.context import render_passage

    blocks = []
    for item in citations or ():
        if isinstance(item, str):
            item = {"id": item, "kind": "rule"}
        if not isinstance(item, Mapping) or not item.get("id"):
            continue
        kind = item.get("kind") or "rule"
        release = item.get("release") or (
            doc.effective_date if doc and kind in ("rule", "glossary") else None
        )
        text = item.get("text")
        if not text and doc is not None:
            if kind == "rule" and item["id"] in doc.rules:
                text = doc.rules[item["id"]].full_text()
            elif kind == "glossary" and item["id"] in doc.glossary:
                text = doc.glossary[item["id"]].text
        if text:
            blocks.append(
                render_passage(
                    Passage(
                        key=f"{kind}:{item['id']}", text=text, citation=Citation(item["id"], kind, release)
                    )
                )
            )
    return "\n\n".join(blocks)


def feedback_examples(
    rows: Iterable[Mapping[str, Any]], doc: RulesDocument | None = None
) -> list[TrainingExample]:
    """Helpful answers as positives, unhelpful ones as negatives; rows without a net vote are skipped."""
    out = []
    for n, row in enumerate(rows):
        score = row.get("score") or 0
        question, answer = str(row.get("question") or "").strip(), str(row.get("answer") or "").strip()
        experts = [e for e in (row.get("experts") or []) if e in Expert._value2member_map_]
        if score == 0 or not question or not answer or not experts:
            continue
        try:
            out.append(
                TrainingExample(
                    experts=tuple(experts),
                    question=question,
                    answer=answer,
                    context=_citation_context(row.get("citations") or [], doc),
                    source=f"feedback:{row.get('id', n)}",
                    label="positive" if score > 0 else "negative",
                )
            )
        except DatasetError:
            continue
    return out


# --- admin files -----------------------------------------------------------------------------------------


def admin_files(state_dir: Path, expert: str) -> list[Path]:
    folder = state_dir / TRAINING_DATA_DIR / expert
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jsonl", ".csv") and p.is_file())


def admin_examples(state_dir: Path, expert: str, data_dir: Path | None = None) -> list[TrainingExample]:
    out = []
    for path in admin_files(state_dir, expert):
        assert_trainable(path, data_dir)
        for example in read_examples(path, default_expert=expert, data_dir=data_dir):
            source = example.source or f"admin:{path.name}"
            if not source.startswith("admin"):
                source = f"admin:{source}"
            out.append(
                TrainingExample(**{**example.to_json(), "experts": tuple(example.experts), "source": source})
            )
    return out


# --- putting it together ---------------------------------------------------------------------------------


def load_rules_document(settings: Settings) -> RulesDocument:
    from knowledge.rules import load_release

    return load_release(settings.paths.rules_dir, settings.paths.rules_release)


def build_expert_dataset(
    settings: Settings,
    expert: Expert | str,
    feedback: Iterable[Mapping[str, Any]] = (),
    config: TrainConfig | None = None,
    *,
    doc: RulesDocument | None = None,
    include_rules: bool = True,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> ExpertDataset:
    """Everything one expert trains and validates on (see the module docstring for the sources).

    With ``tokenizer``, examples too long for ``config.max_seq_len`` are left out *before* the size caps, so
    a capped set holds that many usable examples.
    """
    expert = Expert(expert).value
    config = config or TrainConfig()
    doc = doc if doc is not None else load_rules_document(settings)
    rules = rules_examples(doc, expert) if include_rules else []
    fed = [e for e in feedback_examples(feedback, doc) if expert in e.experts]
    admin = [e for e in admin_examples(settings.paths.state_dir, expert, settings.paths.data_dir)]
    positives = [e for e in (*admin, *fed, *rules) if e.label == "positive"]
    # A single-expert adapter trains on the expert's own prompt, whatever other experts a row names.
    positives = [
        e if e.experts == (expert,) else TrainingExample(**{**e.to_json(), "experts": (expert,)})
        for e in positives
    ]
    negatives = [e for e in (*admin, *fed) if e.label == "negative"]
    too_long = 0
    if tokenizer is not None:
        from training.batching import encode_example

        fitting = [e for e in positives if encode_example(tokenizer, e, config.max_seq_len) is not None]
        too_long, positives = len(positives) - len(fitting), fitting
    train, val = split_examples(positives, config.val_share)
    stats = {
        "sources": dict(Counter(e.source.split(":")[0] for e in positives)),
        "negatives": len(negatives),
        "too_long": too_long,
        "train_available": len(train),
        "val_available": len(val),
    }
    train, val = cap(train, config.max_train_examples), cap(val, config.max_val_examples)
    stats.update(train=len(train), val=len(val), release=doc.effective_date)
    return ExpertDataset(expert, train, val, negatives, stats)


def build_mixed_dataset(
    settings: Settings,
    feedback: Iterable[Mapping[str, Any]] = (),
    config: TrainConfig | None = None,
    *,
    doc: RulesDocument | None = None,
) -> ExpertDataset:
    """Examples that name two or more experts (fusion training): rules-derived plus helpful multi-expert feedback."""
    config = config or TrainConfig()
    doc = doc if doc is not None else load_rules_document(settings)
    fed = [e for e in feedback_examples(feedback, doc) if len(e.experts) > 1 and e.label == "positive"]
    train, val = split_examples([*fed, *mixed_rules_examples(doc)], config.val_share)
    return ExpertDataset(
        "fusion",
        cap(train, config.max_train_examples),
        cap(val, config.max_val_examples),
        stats={"feedback": len(fed), "train_available": len(train), "val_available": len(val)},
    )
