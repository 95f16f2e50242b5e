"""One training example, its JSONL/CSV form, and the guard that keeps evaluation data out of training.

File format (JSONL: one object a line; CSV: a header with the same column names)::

    question   required
    answer     required
    context    optional: the rules/cards text the answer is grounded in (the serving prompt's context)
    experts    optional: list (JSONL) or "reason|explain" (CSV); default the folder's expert
    label      optional: "positive" (default) or "negative" (kept for reporting, never trained on)
    source     optional: where the row came from
    group      optional: rows with the same group land on the same side of the train/validation split

The question sets in ``<data_dir>/qa`` measure answer quality; training on them would make every
evaluation meaningless, so :func:`assert_trainable` refuses any file inside that folder (also through a
symlink) and any row that carries the evaluation sets' gold-label fields.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.api import Expert
from engine.prompts import format_example, format_prompt
from training.errors import DatasetError, EvaluationDataError

LABELS = ("positive", "negative")
COLUMNS = ("experts", "question", "context", "answer", "label", "source", "group")
EVALUATION_FIELDS = frozenset({"gold_cr_rules", "gold_entities", "gold_path", "stratum", "vector_should"})
"""Fields only the held-out question sets have: a row with any of them is evaluation data."""


@dataclass(frozen=True, slots=True)
class TrainingExample:
    experts: tuple[str, ...]
    """Expert values; the first one's prompt is used for single-expert adapter training."""
    question: str
    answer: str
    context: str = ""
    source: str = ""
    label: str = "positive"
    group: str = ""

    def __post_init__(self) -> None:
        if not self.question.strip() or not self.answer.strip():
            raise DatasetError("a training example needs a non-empty question and answer")
        if self.label not in LABELS:
            raise DatasetError(f"label must be one of {LABELS}, got {self.label!r}")
        try:
            experts = tuple(Expert(e).value for e in self.experts)
        except ValueError as exc:
            raise DatasetError(
                f"unknown expert in {self.experts!r}; known: {', '.join(e.value for e in Expert)}"
            ) from exc
        if not experts:
            raise DatasetError("a training example needs at least one expert")
        object.__setattr__(self, "experts", experts)

    @property
    def split_key(self) -> str:
        return self.group or f"q:{self.question.strip().lower()}"

    @property
    def uid(self) -> str:
        """Stable identity of the example (what "already trained on" remembers)."""
        raw = "\x1f".join([",".join(self.experts), self.question.strip(), self.answer.strip()])
        return hashlib.sha1(raw.encode()).hexdigest()[:16]

    def prompt(self, experts: Sequence[str] | None = None) -> str:
        """The serving prompt (shared template from ``engine.prompts``): what the loss skips."""
        return format_prompt(list(experts or self.experts), self.question, self.context or None)

    def text(self, experts: Sequence[str] | None = None) -> str:
        return format_example(list(experts or self.experts), self.question, self.context or None, self.answer)

    def to_json(self) -> dict[str, Any]:
        return {
            "experts": list(self.experts),
            "question": self.question,
            "context": self.context,
            "answer": self.answer,
            "label": self.label,
            "source": self.source,
            "group": self.group,
        }

    @classmethod
    def from_row(
        cls, row: dict[str, Any], default_expert: str | None = None, where: str = ""
    ) -> TrainingExample:
        marked = EVALUATION_FIELDS & set(row)
        if marked:
            raise EvaluationDataError(
                f"{where}: this row has evaluation-set fields ({', '.join(sorted(marked))}); "
                "held-out question sets are for evaluation only and are never trained on"
            )
        experts: Any = row.get("experts") or row.get("expert") or default_expert
        if isinstance(experts, str):
            experts = [e.strip() for e in experts.replace(",", "|").split("|") if e.strip()]
        if not experts:
            raise DatasetError(
                f"{where}: no expert given (add an 'experts' field or put the file in an expert's folder)"
            )
        try:
            return cls(
                experts=tuple(experts),
                question=str(row.get("question") or ""),
                answer=str(row.get("answer") or ""),
                context=str(row.get("context") or ""),
                source=str(row.get("source") or ""),
                label=str(row.get("label") or "positive"),
                group=str(row.get("group") or ""),
            )
        except DatasetError as exc:
            raise DatasetError(f"{where}: {exc}") from None


# --- the evaluation guard --------------------------------------------------------------------------------


def evaluation_dirs(data_dir: Path | None = None) -> list[Path]:
    """Folders whose files are evaluation-only: ``<data_dir>/qa`` and the shared data's ``qa``."""
    from hexcore.settings import PathSettings, default_data_dir

    dirs = {default_data_dir() / "qa"}
    if data_dir is not None:
        dirs.add(Path(data_dir) / "qa")
    else:
        try:
            dirs.add(PathSettings().data_dir / "qa")
        except Exception:  # settings unreadable: the defaults above still guard
            pass
    return sorted({d.resolve() for d in dirs})


def assert_trainable(path: Path | str, data_dir: Path | None = None) -> Path:
    """``path`` resolved, or ``EvaluationDataError`` when it is (or links into) an evaluation folder."""
    resolved = Path(path).resolve()
    for folder in evaluation_dirs(data_dir):
        if resolved == folder or folder in resolved.parents:
            raise EvaluationDataError(
                f"refusing to train on {path}: files under {folder} are held-out evaluation data"
            )
    return resolved


# --- reading and writing ---------------------------------------------------------------------------------


def read_examples(
    path: Path | str, default_expert: str | None = None, data_dir: Path | None = None
) -> list[TrainingExample]:
    """Examples from a ``.jsonl`` or ``.csv`` file (evaluation data refused)."""
    path = assert_trainable(path, data_dir)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    rows: list[tuple[str, dict[str, Any]]] = []
    if suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path}:{n}: not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{n}: expected a JSON object")
            rows.append((f"{path}:{n}", row))
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields may span lines
        missing = {"question", "answer"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: CSV header lacks {', '.join(sorted(missing))}")
        rows = [(f"{path}:{n}", dict(row)) for n, row in enumerate(reader, 2)]
    else:
        raise DatasetError(f"{path}: training files must be .jsonl or .csv")
    return [TrainingExample.from_row(row, default_expert, where) for where, row in rows]


def write_jsonl(path: Path, examples: Iterable[TrainingExample]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for example in examples:
            fh.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


def write_csv(path: Path, examples: Iterable[TrainingExample]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for example in examples:
            row = example.to_json()
            row["experts"] = "|".join(example.experts)
            writer.writerow(row)
            n += 1
    return n
