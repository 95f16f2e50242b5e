"""Recall@k evaluation: hit rules (gold or its parent), skipped questions, per-difficulty numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowledge.bm25 import BM25Retriever
from knowledge.errors import DataMissing
from knowledge.passages import build_passages, index_texts
from knowledge.recall import accepted_numbers, evaluate_recall, parent_rule


@pytest.fixture(scope="module")
def bm25(rules_doc) -> BM25Retriever:
    passages = build_passages(rules_doc)
    return BM25Retriever(passages, index_texts(passages, rules_doc))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_parent_rule() -> None:
    assert parent_rule("505.6a") == "505.6"
    assert parent_rule("505.6") == "505"
    assert parent_rule("505") is None
    assert accepted_numbers(["505.6a", "117.1"]) == {"505.6a", "505.6", "117.1", "117"}


def test_hits_misses_parents_and_skipped(tmp_path: Path, bm25: BM25Retriever) -> None:
    qa = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"id": 1, "difficulty": "easy", "question": "702.19b", "rule_refs": ["702.19b"]},
            # exact sub-rule gold, but the retriever returns its parent rule first: a hit through the parent
            {"id": 2, "difficulty": "easy", "question": "rule 704.5", "rule_refs": ["704.5z"]},
            {"id": 3, "difficulty": "hard", "question": "trample", "rule_refs": ["100.1"]},
            {"id": 4, "difficulty": "hard", "question": "tournament conduct", "rule_refs": []},
        ],
    )
    report = evaluate_recall(bm25, qa, k=3)
    assert (report.total, report.scored, report.hits) == (4, 3, 2)
    assert report.recall == pytest.approx(2 / 3)
    assert report.skipped == ["4"]
    core = {
        name: {key: group[key] for key in ("recall", "hits", "scored")}
        for name, group in report.by_difficulty.items()
    }
    assert core == {  # the keys every report had before recall@1/@10 and MRR were added beside them
        "easy": {"recall": 1.0, "hits": 2, "scored": 2},
        "hard": {"recall": 0.0, "hits": 0, "scored": 1},
    }
    assert report.by_difficulty["hard"]["recall@3"] == 0.0
    first, second, third = report.results
    assert first.hit and first.matched == "702.19b" and "702.19b" in first.retrieved
    assert second.hit and second.matched == "704.5"
    assert not third.hit and len(third.retrieved) == 3
    data = report.to_json()
    assert data["results"][2]["gold"] == ["100.1"] and json.dumps(data)
    assert "results" not in report.to_json(with_results=False)


def test_gold_cr_rules_field_is_read(tmp_path: Path, bm25: BM25Retriever) -> None:
    qa = write_jsonl(
        tmp_path / "qa.jsonl",
        [{"id": "x", "stratum": "def", "question": "702.9a", "gold_cr_rules": ["702.9a"]}],
    )
    report = evaluate_recall(bm25, qa, k=5)
    assert report.hits == 1 and report.by_difficulty["def"]["scored"] == 1


def test_missing_or_broken_files_raise_data_missing(tmp_path: Path, bm25: BM25Retriever) -> None:
    with pytest.raises(DataMissing):
        evaluate_recall(bm25, tmp_path / "none.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DataMissing):
        evaluate_recall(bm25, tmp_path / "bad.jsonl")


@pytest.mark.slow
def test_hybrid_beats_bm25_on_definition_questions(make_hybrid, bm25: BM25Retriever, data_dir: Path) -> None:
    qa = data_dir / "qa" / "definitions-dev.jsonl"
    hybrid = evaluate_recall(make_hybrid(), qa, k=5)
    baseline = evaluate_recall(bm25, qa, k=5)
    assert hybrid.scored == baseline.scored == 15
    assert hybrid.recall > baseline.recall


def test_mrr_and_recall_at_each_cutoff(tmp_path):
    import json

    from knowledge.models import Citation, Passage, RetrievalResult
    from knowledge.recall import evaluate_recall

    rows = [
        {"id": 1, "question": "first", "rule_refs": ["100.1"]},
        {"id": 2, "question": "third", "rule_refs": ["100.3a"]},  # its parent 100.3 is at rank 3
        {"id": 3, "question": "missing", "rule_refs": ["999.1"]},
    ]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(r) for r in rows))

    class Ranked:
        def search(self, query, k=8, kinds=None):
            numbers = ["100.1", "100.2", "100.3", *(f"200.{i}" for i in range(20))]
            return [RetrievalResult(Passage(f"rule:{n}", n, Citation(n, "rule")), 1.0) for n in numbers][:k]

    report = evaluate_recall(Ranked(), qa, k=5)
    assert report.recall_at == {1: 1 / 3, 5: 2 / 3, 10: 2 / 3}
    assert report.mrr == pytest.approx((1 + 1 / 3) / 3)
    assert [r.rank for r in report.results] == [1, 3, None]
    assert report.by_difficulty["all"]["mrr"] == pytest.approx(report.mrr)
