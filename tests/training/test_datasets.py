"""Per-expert datasets from the real rules, feedback rows and admin files; the split; the evaluation guard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.api import Expert
from hexcore.settings import PathSettings, Settings
from knowledge.models import RulesDocument
from training.config import TrainConfig
from training.datasets import (
    build_expert_dataset,
    build_mixed_dataset,
    feedback_examples,
    load_rules_document,
    split_examples,
)
from training.errors import DatasetError, EvaluationDataError
from training.examples import TrainingExample, assert_trainable, read_examples, write_csv, write_jsonl
from training.rules_data import rules_examples, split_sentences

_CITE = re.compile(r"(?:CR|Rule) (\d{3}(?:\.\d+[a-z]?)?)\b")


@pytest.fixture(scope="module")
def doc(data_dir: Path) -> RulesDocument:
    return load_rules_document(Settings(paths=PathSettings(data_dir=data_dir)))


@pytest.mark.parametrize("expert", list(Expert))
def test_rules_examples_are_grounded_in_their_context(doc: RulesDocument, expert: Expert) -> None:
    examples = rules_examples(doc, expert)
    assert len(examples) > 200
    assert len({(e.question, e.answer) for e in examples}) == len(examples)
    for example in examples:
        assert example.experts == (expert.value,) and example.source == f"rules:{doc.effective_date}"
        cited = _CITE.findall(example.answer)
        assert cited or example.answer.endswith(")") and "(Glossary: " in example.answer, example.answer
        # rule-first, as served: an answer with a rule opens with it ("Rule 702.19b says that ...")
        assert example.answer.startswith(("Rule ", example.question.split()[-1].rstrip("?.") + ":")) or (
            "(Glossary: " in example.answer
        ), example.answer
        # every rule an answer cites is quoted in its context, with the release, as retrieval renders it
        for number in cited:
            assert (
                f"[CR {number} ({doc.effective_date})" in example.context
                or number.split(".")[0] in example.context
            )


def test_each_expert_gets_its_own_framing(doc: RulesDocument) -> None:
    by_expert = {e: rules_examples(doc, e) for e in Expert}
    trample = next(
        e
        for e in by_expert[Expert.EXPLAIN]
        if e.question
        in ("What is Trample?", "What does Trample mean?", "Explain Trample.", "Define Trample in Magic.")
    )
    assert trample.answer.startswith("Rule 702.19a says that trample is a static ability")
    assert "Trample: A keyword ability that modifies how a creature assigns combat damage." in trample.answer
    assert "See rule" not in trample.answer
    assert (
        "[CR 702.19a" in trample.context
    )  # the heading rule's first sub-rule, not the bare "Trample" heading
    assert any(
        e.answer.startswith("Rule 702.19c says that") and "Applying it here:" in e.answer
        for e in by_expert[Expert.REASON]
    )
    assert any("trample" in e.question and "For example:" in e.answer for e in by_expert[Expert.TEACH])
    assert all(e.question.endswith("?") for e in by_expert[Expert.PREDICT])
    assert all("So yes, that" in e.answer for e in by_expert[Expert.RETROSPECT])


def test_sentences_never_split_inside_a_quoted_ability() -> None:
    text = "Meteor Crater has the ability “{T}: Choose a color. Add one mana of that color.” If you control none, it adds nothing."
    assert split_sentences(text) == [
        "Meteor Crater has the ability “{T}: Choose a color. Add one mana of that color.”",
        "If you control none, it adds nothing.",
    ]


def test_split_is_deterministic_and_keeps_groups_together(doc: RulesDocument) -> None:
    examples = rules_examples(doc, Expert.REASON)
    train, val = split_examples(examples, 0.2)
    again_train, again_val = split_examples(list(reversed(examples)), 0.2)
    assert {e.uid for e in train} == {e.uid for e in again_train} and {e.uid for e in val} == {
        e.uid for e in again_val
    }
    assert 0.1 < len(val) / len(examples) < 0.3
    assert not {e.group for e in train} & {e.group for e in val}


def test_feedback_becomes_positives_and_negatives(doc: RulesDocument) -> None:
    rows = [
        {"question": "Does trample work when blocked by a 1/1?", "answer": "Yes: assign 1 lethal, the rest tramples over (CR 702.19b).",
         "experts": ["reason", "explain"], "citations": [{"id": "702.19b", "kind": "rule", "release": doc.effective_date}], "score": 2},
        {"question": "What is ward?", "answer": "Ward makes a creature indestructible.", "experts": ["explain"],
         "citations": ["702.21a"], "score": -1},
        {"question": "No votes", "answer": "ignored", "experts": ["explain"], "citations": [], "score": 0},
        {"question": "Bad expert", "answer": "ignored", "experts": ["nonsense"], "citations": [], "score": 3},
    ]  # fmt: skip
    examples = feedback_examples(rows, doc)
    assert [(e.label, e.experts) for e in examples] == [
        ("positive", ("reason", "explain")),
        ("negative", ("explain",)),
    ]
    assert examples[0].context.startswith(f"[CR 702.19b ({doc.effective_date})]")
    assert doc.rules["702.19b"].text in examples[0].context
    assert doc.rules["702.21a"].text in examples[1].context  # a bare rule number is looked up in the release


def test_expert_dataset_mixes_rules_feedback_and_admin_files(
    tmp_path: Path, data_dir: Path, doc: RulesDocument
) -> None:
    settings = Settings(paths=PathSettings(data_dir=data_dir, state_dir=tmp_path / "state"))
    folder = tmp_path / "state" / "training_data" / "explain"
    folder.mkdir(parents=True)
    (folder / "extra.jsonl").write_text(
        json.dumps(
            {
                "question": "What is a mulligan?",
                "answer": "Shuffling your hand back for a new one (CR 103.5).",
                "context": "[CR 103.5] ...",
            }
        )
        + "\n"
    )
    (folder / "more.csv").write_text(
        "question,answer,label\nWhat is mana?,The resource spells cost (CR 106.1).,positive\nIs mana a card?,Yes.,negative\n"
    )
    feedback = [
        {
            "question": "What's deathtouch?",
            "answer": "Any damage from it is lethal (CR 702.2b).",
            "experts": ["explain", "teach"],
            "citations": ["702.2b"],
            "score": 1,
        }
    ]
    config = TrainConfig(max_train_examples=40, max_val_examples=10)
    dataset = build_expert_dataset(settings, "explain", feedback, config, doc=doc)
    assert len(dataset.train) == 40 and len(dataset.val) <= 10
    everything = dataset.train + dataset.val
    sources = {e.source.split(":")[0] for e in everything}
    assert {"admin", "feedback", "rules"} <= sources  # capped sets keep the scarce examples first
    assert all(e.experts == ("explain",) for e in everything)
    assert [e.question for e in dataset.negatives] == ["Is mana a card?"]
    assert dataset.stats["sources"]["admin"] == 2 and dataset.stats["negatives"] == 1
    # the export round-trips through both formats
    files = dataset.export(tmp_path / "export")
    for name in ("train", "val"):
        assert read_examples(files[f"{name}.jsonl"]) == getattr(dataset, name)
        assert read_examples(files[f"{name}.csv"]) == getattr(dataset, name)


def test_mixed_dataset_names_several_experts(doc: RulesDocument, tmp_path: Path, data_dir: Path) -> None:
    settings = Settings(paths=PathSettings(data_dir=data_dir, state_dir=tmp_path))
    mixed = build_mixed_dataset(settings, doc=doc)
    assert mixed.train and mixed.val
    assert all(len(e.experts) >= 2 for e in mixed.train + mixed.val)
    assert {e.experts for e in mixed.train} == {("explain", "teach"), ("predict", "reason")}


def test_evaluation_files_are_refused(data_dir: Path, tmp_path: Path) -> None:
    qa = data_dir / "qa" / "definitions-dev.jsonl"
    with pytest.raises(EvaluationDataError, match="held-out evaluation data"):
        read_examples(qa, "explain")
    with pytest.raises(EvaluationDataError):
        assert_trainable(data_dir / "qa")
    link = tmp_path / "sneaky.jsonl"  # a symlink into the evaluation folder is refused too
    link.symlink_to(qa)
    with pytest.raises(EvaluationDataError):
        read_examples(link, "explain")
    copied = tmp_path / "copied.jsonl"  # and so is a copy: its rows carry the gold-label fields
    copied.write_text(qa.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    with pytest.raises(EvaluationDataError, match="evaluation-set fields"):
        read_examples(copied, "explain")


def test_admin_folder_with_evaluation_data_stops_the_build(
    tmp_path: Path, data_dir: Path, doc: RulesDocument
) -> None:
    settings = Settings(paths=PathSettings(data_dir=data_dir, state_dir=tmp_path / "state"))
    folder = tmp_path / "state" / "training_data" / "reason"
    folder.mkdir(parents=True)
    (folder / "multihop.jsonl").symlink_to(data_dir / "qa" / "multihop-dev.jsonl")
    with pytest.raises(EvaluationDataError):
        build_expert_dataset(settings, "reason", doc=doc)


def test_bad_rows_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a", "experts": ["wizard"]}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: .*unknown expert"):
        read_examples(bad)
    (tmp_path / "noexpert.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(DatasetError, match="no expert given"):
        read_examples(tmp_path / "noexpert.jsonl")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DatasetError, match=".jsonl or .csv"):
        read_examples(tmp_path / "x.txt", "explain")
    rows = [
        TrainingExample(("teach", "explain"), "Q?", "A, with a comma.", "ctx\nline 2", "s", "positive", "g")
    ]
    write_jsonl(tmp_path / "ok.jsonl", rows)
    write_csv(tmp_path / "ok.csv", rows)
    assert read_examples(tmp_path / "ok.jsonl") == rows == read_examples(tmp_path / "ok.csv")
