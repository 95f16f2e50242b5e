"""``evaluate_qa`` over the engine protocol: aggregation, grouping, failed and interrupted runs, output.

The engine is the bot tests' ``FakeEngine`` (real rules and card passages, no model) scripted per question:
which rules and cards the answer cites, what it says, and which questions fail. Similarity uses the real
embedder. The real engine end to end is in ``test_cli.py``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.api import Answer, AnswerRequest, Expert
from engine.errors import GenerationError
from evaluation.qa import LATENCY_PLOT, QUALITY_PLOT, QAReport, evaluate_qa, percentile, write_plots
from knowledge.models import Citation, Passage
from tests.bot.fake_engine import FakeData, FakeEngine, load_fake_data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BEGINNING = "Untap, upkeep, and draw."
FLASH = "No, unless the creature has flash or an effect allows it."

ROWS = [
    {
        "id": 2,
        "difficulty": "fundamentals",
        "question": "What are the three steps of the beginning phase, in order?",
        "answer": BEGINNING,
        "rule_refs": ["501.1", "502.4"],
    },
    {
        "id": 4,
        "difficulty": "fundamentals",
        "question": "Can a player cast a creature spell during their opponent's turn?",
        "answer": FLASH,
        "rule_refs": ["505.6a", "117.1a"],
    },
    {
        "id": 490,
        "difficulty": "edge_cases",
        "question": "At a Regular REL event, a player is slow to sideboard. What do you do?",
        "answer": "Remind the player that taking unreasonable amounts of time is slow play.",
        "rule_refs": [],
    },
    {
        "id": 7,
        "difficulty": "edge_cases",
        "question": "This question makes the engine fail.",
        "answer": "Whatever.",
        "rule_refs": ["702.19b"],
    },
    {
        "id": "hand-jace",
        "stratum": "interaction_multihop",
        "question": "Jace, the Mind Sculptor brainstorms with its 0 ability. What happens?",
        "answer": "You draw three cards, then put two cards from your hand on top of your library.",
        "gold_cr_rules": ["606.3", "121.1"],
        "gold_entities": ["Jace, the Mind Sculptor", "Ponder"],
    },
]

SCRIPT = {  # question -> (answer text, cited rules and cards)
    ROWS[0]["question"]: (BEGINNING, ("501.1", "502.4")),
    ROWS[1]["question"]: ("No. Creature spells need flash to be cast then.", ("702.8a", "505.6")),
    ROWS[2]["question"]: ("Call a judge.", ("702.19b",)),
    ROWS[4]["question"]: (
        "Jace, the Mind Sculptor's ability (CR 606.3): draw three cards, put back two.",
        ("606.3", "jace, the mind sculptor"),
    ),
}


@dataclass
class ScriptedEngine(FakeEngine):
    """Answers and citations per question from ``SCRIPT``; a question missing from it fails."""

    script: dict = field(default_factory=lambda: SCRIPT)
    max_active: int = 0

    def __post_init__(self) -> None:
        self.answer_text = self._scripted_text
        self.on_token = self._track

    def _scripted_text(self, request: AnswerRequest) -> str:
        if request.question not in self.script:
            raise GenerationError("out of memory")
        return self.script[request.question][0]

    def _track(self, index: int) -> None:
        self.max_active = max(self.max_active, self.active)

    def passages(self, request: AnswerRequest) -> list[Passage]:
        out = []
        for ref in self.script[request.question][1]:
            if ref in self.data.rules.rules:
                out.append(self._rule_passage(ref))
            else:
                card = self.data.cards[ref]
                out.append(Passage(f"card:{ref}", card.oracle_block(), Citation(card.name, "card")))
        return out


@pytest.fixture(scope="module")
def fake_data(data_dir: Path) -> FakeData:
    return load_fake_data(data_dir)


@pytest.fixture(scope="module")
def encode():
    from knowledge.embeddings import get_embedder

    return get_embedder().encode


@pytest.fixture
def engine(fake_data: FakeData) -> ScriptedEngine:
    return ScriptedEngine(fake_data, delay_s=0.01)


@pytest.fixture
async def report(engine: ScriptedEngine, encode) -> QAReport:
    return await evaluate_qa(engine, ROWS, embedder=encode)


async def test_each_question_is_scored_and_none_stays_none(report: QAReport) -> None:
    assert [r.id for r in report.results] == ["2", "4", "490", "7", "hand-jace"]
    beginning, flash, policy, failed, jace = report.results
    assert (beginning.citation_recall, beginning.citation_precision) == (1.0, 1.0)
    assert beginning.keyword_f1 == 1.0 and beginning.similarity == pytest.approx(1.0, abs=1e-4)
    # 505.6 is the parent of gold 505.6a; 117.1a is missed; 702.8a matches no gold rule.
    assert (flash.citation_recall, flash.citation_precision) == (0.5, 0.5)
    assert flash.similarity is not None and 0 < flash.similarity < beginning.similarity
    assert policy.citation_recall is None and policy.citation_precision is None  # no gold rules
    assert policy.keyword_f1 == 0.0 and policy.similarity is not None
    # The card is cited (folded name), "Ponder" is neither cited nor named.
    assert jace.entity_recall == 0.5 and jace.citation_recall == 0.5 and jace.citation_precision == 1.0
    assert jace.citations[-1] == {"id": "Jace, the Mind Sculptor", "kind": "card", "release": None}
    assert beginning.entity_recall is None
    for r in (beginning, flash, policy, jace):
        assert r.error is None and r.experts == ["reason"] and r.answer
        assert r.ttft_s is not None and 0.01 <= r.ttft_s <= r.latency_s
        assert r.generated_tokens == len(r.answer.split()) and r.tokens_per_s and r.tokens_per_s > 0
    assert failed.citation_recall is None and failed.similarity is None and failed.keyword_f1 is None
    # Only Jace's text cites one of its quoted rules (606.3).
    assert [r.prose_cites for r in report.results] == [0.0, 0.0, 0.0, None, 1.0]


async def test_a_failed_question_is_kept_and_counted(report: QAReport, engine: ScriptedEngine) -> None:
    failed = report.results[3]
    assert failed.error == "GenerationError: out of memory" and failed.answer == ""
    assert failed.latency_s > 0 and failed.ttft_s is None
    assert report.summary.errors == 1 and report.summary.answered == 4 and report.summary.questions == 5
    assert len(engine.requests) == 5  # the run went on after the failure


async def test_summary_means_only_defined_values(report: QAReport) -> None:
    s = report.summary
    assert s.metrics["citation_recall"].defined == 3  # 490 has no gold rules, 7 failed
    assert s.mean("citation_recall") == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert s.metrics["citation_precision"].defined == 3
    assert s.mean("citation_precision") == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert s.metrics["entity_recall"].defined == 1 and s.mean("entity_recall") == 0.5
    assert s.metrics["similarity"].defined == 4 and s.metrics["keyword_f1"].defined == 4
    latencies = sorted(r.latency_s for r in report.results if r.error is None)
    assert s.latency_p50_s == latencies[1] and s.latency_max_s == latencies[-1] == s.latency_p95_s
    assert s.ttft_p50_s is not None and s.ttft_p50_s >= 0.01
    assert s.tokens_per_s is not None and s.tokens_per_s > 0


async def test_per_difficulty_groups_in_file_order(report: QAReport) -> None:
    groups = report.by_difficulty
    assert list(groups) == ["fundamentals", "edge_cases", "interaction_multihop"]  # difficulty or stratum
    assert groups["fundamentals"].mean("citation_recall") == 0.75
    edge = groups["edge_cases"]
    assert (edge.questions, edge.answered, edge.errors) == (2, 1, 1)
    assert edge.mean("citation_recall") is None and edge.metrics["citation_recall"].defined == 0
    assert groups["interaction_multihop"].mean("entity_recall") == 0.5


async def test_json_and_markdown(report: QAReport, fake_data: FakeData) -> None:
    data = json.loads(json.dumps(report.to_json()))
    assert data["questions"] == data["planned"] == 5 and data["interrupted"] is False
    assert data["summary"]["citation_recall"]["defined"] == 3
    assert data["summary"]["errors"] == 1
    assert data["by_difficulty"]["edge_cases"]["citation_recall"] == {"mean": None, "defined": 0}
    assert [r["id"] for r in data["results"]] == ["2", "4", "490", "7", "hand-jace"]
    markdown = report.to_markdown()
    lines = markdown.splitlines()
    assert lines[0].startswith(
        "| difficulty | n | lead precision | prose shown | cit. recall | cit. precision"
    )
    fundamentals = lines[2].split(" | ")
    assert fundamentals[:6] == ["| fundamentals", "2", "0.50", "1.00", "0.75", "0.75"]
    assert lines[3].split(" | ")[:6] == ["| edge_cases", "2", "–", "1.00", "–", "–"]
    assert lines[5].startswith("| **all** | 5 | 0.67 | 1.00 | 0.67 | 0.83 |")
    # The sample: each answer as a user reads it (lead first), beside the reference answer.
    assert "Sample answers (4 of 5)" in markdown
    assert (
        "- **Q4** Can a player cast" in markdown
        and "lead: CR 702.8a (not gold); gold: 505.6a, 117.1a" in markdown
    )
    assert f"reference: {FLASH}" in markdown and "lead: CR 501.1 (gold)" in markdown
    totals = report.totals_line()
    assert "5 questions; 1 errors; citation recall 0.67 over 3" in totals
    assert "lead precision 0.67 over 3" in totals and "prose shown in 100%" in totals
    assert "shown prose cites a quoted rule in 25%" in totals
    assert data["summary"]["prose_cites"] == {"mean": 0.25, "defined": 4}
    assert data["summary"]["lead_precision"] == {"mean": pytest.approx(2 / 3), "defined": 3}
    first = data["results"][0]
    assert first["lead"] == {
        "id": "501.1",
        "kind": "rule",
        "release": "2026-01-16",
        "text": fake_data.rules.rules["501.1"].full_text(),
    }
    assert first["prose_shown"] is True and data["results"][3]["prose_shown"] is None  # 7 failed


async def test_requests_run_one_at_a_time_with_the_options(fake_data: FakeData, encode) -> None:
    engine = ScriptedEngine(fake_data)
    seen: list[tuple[int, int]] = []
    await evaluate_qa(
        engine,
        ROWS,
        embedder=encode,
        max_new_tokens=7,
        experts=[Expert.TEACH],
        progress=lambda done, total, result: seen.append((done, total)),
    )
    assert engine.max_active == 1
    assert all(r.max_new_tokens == 7 and r.experts == (Expert.TEACH,) for r in engine.requests)
    assert seen == [(i, 5) for i in range(1, 6)]


async def test_an_interrupted_run_returns_what_was_done(fake_data: FakeData, encode) -> None:
    holder: list[asyncio.Task] = []

    def text(request: AnswerRequest) -> str:
        if request.question == ROWS[2]["question"]:
            holder[0].cancel()  # Ctrl-C while the third question is being answered
        return SCRIPT[request.question][0]

    engine = ScriptedEngine(fake_data)
    engine.answer_text = text
    task = asyncio.create_task(evaluate_qa(engine, ROWS, embedder=encode))
    holder.append(task)
    report = await task
    assert task.cancelling() == 0  # the cancellation was handled, not left pending on the task
    assert report.interrupted and report.planned == 5
    assert [r.id for r in report.results] == ["2", "4"]
    assert [r.question for r in engine.cancelled] == [ROWS[2]["question"]]  # aborted in the engine
    assert report.results[0].similarity == pytest.approx(1.0, abs=1e-4)  # finished ones still scored
    assert report.to_json()["interrupted"] is True
    assert "2 questions of 5 (interrupted)" in report.totals_line()


async def test_ungrouped_questions_make_one_row(fake_data: FakeData) -> None:
    rows = [{"question": ROWS[0]["question"], "rule_refs": ["501.1"]}]
    report = await evaluate_qa(ScriptedEngine(fake_data), rows, embedder=None)
    assert list(report.by_difficulty) == ["all"] and report.results[0].id == "0"
    assert report.results[0].similarity is None and report.results[0].keyword_f1 is None  # no reference
    assert report.results[0].citation_precision == 0.5
    lines = report.to_markdown().splitlines()
    assert lines[2].startswith("| all | 1 | 1.00 | 1.00 | 1.00 | 0.50 | – | – |") and lines[3] == ""
    assert "entity recall" not in report.totals_line()  # nothing to say about undefined metrics


async def test_write_plots_writes_pngs(report: QAReport, tmp_path: Path) -> None:
    paths = write_plots(report, tmp_path / "charts")
    assert [p.name for p in paths] == [QUALITY_PLOT, LATENCY_PLOT]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_percentile_is_a_measured_value() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    assert percentile([5.0], 0.95) == 5.0


async def test_calculator_answers_are_counted_over_board_state_questions(fake_data: FakeData) -> None:
    rows = [
        {"id": "b1", "question": ROWS[0]["question"], "rule_refs": ["501.1"], "tags": ["combat"]},
        {"id": "b2", "question": ROWS[1]["question"], "rule_refs": ["505.6a"], "tags": ["power-toughness"]},
        {"id": "o", "question": ROWS[4]["question"], "gold_cr_rules": ["606.3"], "tags": ["stack"]},
    ]

    class Calculating(ScriptedEngine):
        async def generate(self, request):
            async for event in super().generate(request):
                if isinstance(event, Answer) and request.question == ROWS[0]["question"]:
                    event.verdict = "You take 3 damage."
                yield event

    report = await evaluate_qa(Calculating(fake_data), rows, embedder=None)
    assert [r.calculator for r in report.results] == [1.0, 0.0, 0.0]
    assert [r.board_state for r in report.results] == [True, True, False]
    assert report.calculator_coverage() == {
        "taken": 1,
        "board_state_questions": 2,
        "board_state_taken": 1,
        "board_state_coverage": 0.5,
    }
    assert report.to_json()["calculator"]["board_state_coverage"] == 0.5
    assert (
        report.results[0].verdict == "You take 3 damage."
        and "verdict: You take 3 damage." in report.to_markdown()
    )
    assert "calculator answered 1 (1 of 2 board-state questions)" in report.totals_line()
