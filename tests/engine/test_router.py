"""The router on the real embedding model, trained from the examples kept in the repo."""

from __future__ import annotations

import json

import pytest

from engine.api import Expert
from engine.router import (
    EXPERTS,
    Router,
    examples_hash,
    load_examples,
    load_or_train_router,
    split_clauses,
    split_heldout,
    train_router,
)


@pytest.fixture(scope="module")
def examples():
    return load_examples()


@pytest.fixture(scope="module")
def router(examples):
    return train_router(examples)


def test_examples_are_varied_and_cover_every_expert(examples):
    assert len(examples) >= 250
    for expert in EXPERTS:
        assert sum(expert in ex.experts for ex in examples) >= 40, expert
    assert sum(len(ex.experts) > 1 for ex in examples) >= 20  # compound questions
    assert len({ex.text.lower() for ex in examples}) == len(examples)  # no duplicates


def test_heldout_split_is_deterministic_and_disjoint(examples):
    train1, held1 = split_heldout(examples)
    train2, held2 = split_heldout(examples)
    assert [e.text for e in held1] == [e.text for e in held2]
    assert not {e.text for e in train1} & {e.text for e in held1}
    assert 0.1 < len(held1) / len(examples) < 0.3


def test_heldout_accuracy_is_reported_and_useful(router):
    assert router.metrics is not None
    assert router.metrics.heldout_size > 30
    assert router.metrics.top1 >= 0.75  # chance is 0.2
    assert router.metrics.exact_match >= 0.6


@pytest.mark.parametrize(
    ("question", "expert"),
    [
        ("What does lifelink do?", Expert.EXPLAIN),
        ("I'm a total beginner, can you teach me how attacking works?", Expert.TEACH),
        ("Should I attack with my 3/3 into their two untapped 2/2s or hold back?", Expert.PREDICT),
        ("Last game my opponent cast a sorcery on my turn. Was that legal?", Expert.RETROSPECT),
        (
            "If my creature with deathtouch is blocked by an indestructible creature, what happens?",
            Expert.REASON,
        ),
    ],
)
def test_routes_plain_questions_to_the_obvious_expert(router, question, expert):
    assert router.route(question).experts[0] == expert


def test_compound_question_selects_several_experts(router):
    decision = router.route(
        "Explain what flying means, and should I attack with my flyer into their reach creature?"
    )
    assert Expert.EXPLAIN in decision.experts and Expert.PREDICT in decision.experts


def test_never_unrouted_and_thresholds_respected(router):
    strict = Router(router.weight, router.bias, router.embedder, thresholds=0.999)
    assert len(strict.route("hello there").experts) == 1  # falls back to the single best expert
    lenient = Router(router.weight, router.bias, router.embedder, thresholds=0.0)
    assert len(lenient.route("What is trample?").experts) == 3  # capped
    per_expert = Router(router.weight, router.bias, router.embedder, thresholds={Expert.TEACH: 0.0})
    assert Expert.TEACH in per_expert.route("What does lifelink do?").experts


def test_clause_split():
    assert split_clauses("Explain deathtouch, and should I block their 5/5?") == [
        "Explain deathtouch",
        "should I block their 5/5",
    ]
    assert split_clauses("What is trample?") == ["What is trample"]


def test_save_load_round_trip_and_cache(tmp_path, router, examples):
    router.save(tmp_path / "r", examples_hash(examples))
    loaded = Router.load(tmp_path / "r", router.embedder)
    q = "Should I mulligan this hand?"
    assert loaded.route(q).scores == pytest.approx(router.route(q).scores)
    assert loaded.metrics == router.metrics

    router.save(tmp_path / "router", examples_hash(examples))
    cached = load_or_train_router(tmp_path, router.embedder)  # matching hash: loaded, not retrained
    assert cached.route(q).scores == pytest.approx(router.route(q).scores)

    (tmp_path / "router" / "router.json").write_text(json.dumps({"data_hash": "stale"}))
    examples_file = tmp_path / "few.jsonl"
    examples_file.write_text(
        "".join(json.dumps({"text": ex.text, "experts": list(ex.experts)}) + "\n" for ex in examples[::5])
    )
    retrained = load_or_train_router(tmp_path, router.embedder, examples_path=examples_file)
    meta = json.loads((tmp_path / "router" / "router.json").read_text())
    assert meta["data_hash"] == examples_hash(load_examples(examples_file))
    assert retrained.route(q).scores != pytest.approx(router.route(q).scores)


def test_bad_example_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "hi", "experts": ["wizard"]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: unknown expert"):
        load_examples(path)
