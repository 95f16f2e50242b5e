"""``BatchRunner`` on its own: a tiny random model with real LoRA adapters, the real knowledge base and router,
real KV sessions and conversations, driven with ``WorkItem``s as the worker would (no worker thread).

What is checked is the runner's contract: each item settled exactly once and on its own, the lead before any
prose, the calculator and "nothing relevant" answered without the model, fused turns, loops cut, and the
conversation and KV cache kept for the next turn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.adapter_store import AdapterStore, ensure_initial_adapters
from engine.adapters import AdapterRegistry
from engine.api import Answer, AnswerRequest, Expert, LeadFound, TokenDelta
from engine.conversations import ConversationStore
from engine.errors import AdapterError, GenerationError
from engine.fusion import CrossExpertAttention
from engine.pipeline import AnswerPipeline, RequestRecord
from engine.runner import BatchRunner
from engine.sessions import SessionStore
from hexcore.settings import Settings
from tests.engine.work_items import drain, items_for

pytestmark = pytest.mark.slow  # loads the real knowledge base

TRAMPLE = "How does trample work when the blocker dies?"
BOARD = "A 6/6 trampler is blocked by a 3/3, how much damage do I take?"


@pytest.fixture(scope="module")
def pipeline(real_engine_settings: Callable[..., Settings], embedded_tokenizer: Any) -> AnswerPipeline:
    from engine.router import load_or_train_router
    from knowledge.base import KnowledgeBase
    from knowledge.embeddings import get_embedder

    settings = real_engine_settings(context_tokens=200)
    router = load_or_train_router(settings.paths.state_dir, get_embedder(), 0.4)
    return AnswerPipeline(KnowledgeBase.load(settings), router, embedded_tokenizer, context_tokens=200)


@pytest.fixture
def make_runner(
    pipeline: AnswerPipeline, tiny_model_factory: Callable[..., Any], tmp_path: Path
) -> Callable[..., tuple[BatchRunner, list[RequestRecord]]]:
    made: list[BatchRunner] = []

    def make(**kwargs: Any) -> tuple[BatchRunner, list[RequestRecord]]:
        loaded = tiny_model_factory()  # a fresh model: the registry wraps it in peft
        store = AdapterStore(tmp_path / f"adapters{len(made)}")
        ensure_initial_adapters(loaded, store)
        registry = AdapterRegistry(loaded, store, capacity_on_device=5)
        records: list[RequestRecord] = []
        hidden = int(loaded.model.config.hidden_size)
        runner = BatchRunner(
            pipeline,
            loaded,
            registry,
            SessionStore(64 << 20, 600.0, 8),
            CrossExpertAttention(hidden).eval(),
            ConversationStore(8, 600.0),
            batch_size=4,
            on_record=records.append,
            **kwargs,
        )
        made.append(runner)
        return runner, records

    yield make
    for runner in made:
        runner.close()
        runner.registry.close()


async def test_each_item_is_answered_on_its_own_the_lead_first(make_runner) -> None:
    runner, records = make_runner()
    rules, board = items_for(AnswerRequest(TRAMPLE, experts=(Expert.EXPLAIN,)), AnswerRequest(BOARD))
    runner.run([rules, board])
    events, answer = await drain(rules)
    assert isinstance(events[0], LeadFound) and isinstance(answer, Answer)
    assert answer.lead is not None and answer.lead.passage.citation.id.startswith("702.19")
    assert {"queue", "history", "route", "adapters", "retrieve", "lead", "assemble"} <= set(answer.timings_ms)
    assert all(isinstance(e, TokenDelta) for e in events[1:])
    board_events, board_answer = await drain(board)
    assert board_events == [] and isinstance(board_answer, Answer)  # the calculator: no model, no wait
    assert board_answer.verdict == "You take 3 damage."
    assert {r.finish_reason for r in records} >= {"calculator"} and len(records) == 2
    generated = next(r for r in records if r.finish_reason != "calculator")
    (adapter,) = generated.adapters
    assert adapter.startswith("explain-") and not generated.fused and generated.new_tokens >= 1


async def test_a_bug_in_one_request_fails_only_that_request(make_runner, monkeypatch) -> None:
    runner, _ = make_runner()
    real_prepare = runner.pipeline.prepare

    def prepare(request: AnswerRequest, *args: Any, **kwargs: Any) -> Any:
        if "explode" in request.question:
            raise ZeroDivisionError("a bug")
        return real_prepare(request, *args, **kwargs)

    monkeypatch.setattr(runner.pipeline, "prepare", prepare)
    good, bad = items_for(
        AnswerRequest(TRAMPLE, experts=(Expert.EXPLAIN,)), AnswerRequest("explode " + TRAMPLE)
    )
    runner.run([good, bad])
    _, error = await drain(bad)
    assert isinstance(error, GenerationError) and "ZeroDivisionError: a bug" in str(error)
    _, answer = await drain(good)
    assert isinstance(answer, Answer)


async def test_a_fixed_expert_without_its_adapter_fails_with_an_adapter_error(make_runner) -> None:
    runner, _ = make_runner(preload_adapters=False)
    runner.unavailable[Expert.TEACH] = "broken in this test"  # as after a failed registration
    (item,) = items_for(AnswerRequest(TRAMPLE, experts=(Expert.TEACH,)))
    runner.run([item])
    _, error = await drain(item)
    assert isinstance(error, AdapterError) and error.expert == "teach"


async def test_a_cancelled_item_is_left_to_the_worker(make_runner) -> None:
    runner, records = make_runner()
    (item,) = items_for(AnswerRequest(TRAMPLE))
    item.cancel()
    runner.run([item])
    assert item.outcome is None and records == []


async def test_several_experts_fuse_and_a_loop_is_cut(make_runner) -> None:
    runner, records = make_runner(stop_on_repeat=1)  # any token seen twice ends the answer
    (item,) = items_for(AnswerRequest(TRAMPLE, experts=(Expert.EXPLAIN, Expert.TEACH), max_new_tokens=40))
    runner.run([item])
    _, answer = await drain(item)
    assert isinstance(answer, Answer)
    (record,) = records
    assert record.fused and [a.split("-")[0] for a in record.adapters] == ["explain", "teach"]
    assert record.batch_size == 2
    assert record.finish_reason == "repetition"


async def test_a_conversation_keeps_the_turn_and_the_next_one_reuses_its_cache(make_runner) -> None:
    runner, records = make_runner()
    (first,) = items_for(AnswerRequest(TRAMPLE, experts=(Expert.EXPLAIN,), session_id="t1"))
    runner.run([first])
    _, answer = await drain(first)
    assert isinstance(answer, Answer)
    history = runner.core.conversations.get("t1")
    assert history[-1]["role"] == "assistant" and history[-1]["content"].startswith("Rule ")
    (second,) = items_for(
        AnswerRequest(
            "And if the blocker has protection from green?", experts=(Expert.EXPLAIN,), session_id="t1"
        )
    )
    runner.run([second])
    await drain(second)
    assert records[-1].reused_tokens > 0
    runner.end_session("t1")
    assert runner.kv_sessions.stats().count == 0
