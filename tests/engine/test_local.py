"""LocalEngine end to end on the embedded default: real rules, index, router, SmolLM2, adapters, sessions.

One engine per module (the model loads once); answers are capped at 24 new tokens. The ``before_generate``
hook holds a batch (to line requests up for batching and overload) or raises in the worker thread (a crash,
as a CUDA error would be). Waits poll observable state; the loop-lag test compares the loop's gaps with the
work's own duration rather than with a fixed time.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from engine.api import Answer, AnswerRequest, Engine, Expert, LeadFound, TokenDelta
from engine.conversations import ConversationStore
from engine.errors import AdapterError, EngineOverloaded, GenerationError, InvalidRequest
from engine.local import LocalEngine
from engine.pipeline import NO_PROSE, RequestRecord
from hexcore.settings import EngineSettings, Settings

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

RELEASE = "2026-01-16"
QUEUE = 4


@pytest.fixture(scope="module")
def local_settings(real_engine_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """This module's settings on the shared state dir or on ``state``: 24 new tokens, a queue of ``QUEUE``,
    batches of 4.

    Quantization "none": these tests compare answers bit for bit (a reused KV session against recomputing
    it); int4 decode steps and bf16 prefill round differently, so they hold exactly only in one dtype.
    """

    def make(state: Path | None = None) -> Settings:
        engine = EngineSettings(max_new_tokens=24, queue_size=QUEUE, batch_size=4, quantization="none")
        return real_engine_settings(engine=engine, state_dir=state)

    return make


class Hook:
    """``before_generate``: records each batch; ``gate`` holds it; a question containing ``crash_on`` crashes."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.crash_on: str | None = None
        self.batches: list[list[str]] = []

    def __call__(self, requests: list[AnswerRequest]) -> None:
        self.batches.append([r.question for r in requests])
        if self.crash_on and any(self.crash_on in r.question for r in requests):
            raise RuntimeError("simulated CUDA error: device-side assert triggered")
        self.gate.wait(120)


@pytest.fixture(scope="module")
def hook() -> Hook:
    return Hook()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(local_settings: Callable[..., Settings], hook: Hook) -> AsyncIterator[LocalEngine]:
    eng = LocalEngine(local_settings(), before_generate=hook, restart_backoff=(0.05, 1.0))
    await eng.start()
    try:
        yield eng
    finally:
        await eng.close()


async def until(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def idle(engine: LocalEngine) -> None:
    """Wait until the worker has finished its last batch: it counts a batch just after its last answer."""
    await until(lambda: engine.worker.status().in_flight == 0 and engine.worker.status().queue_depth == 0)


async def collect(engine: LocalEngine, request: AnswerRequest) -> tuple[list[str], Answer]:
    deltas: list[str] = []
    answer: Answer | None = None
    async for event in engine.generate(request):
        if isinstance(event, TokenDelta):
            deltas.append(event.text)
        elif isinstance(event, Answer):
            answer = event
    assert answer is not None
    return deltas, answer


def rule_ids(answer: Answer) -> list[str]:
    return [c.id for c in answer.citations if c.kind == "rule"]


# ---------------------------------------------------------------------------------------------- answers


async def test_is_an_engine(engine: LocalEngine) -> None:
    assert isinstance(engine, Engine)


async def test_trample_is_answered_with_verbatim_trample_rules(engine: LocalEngine) -> None:
    deltas, answer = await collect(engine, AnswerRequest("How does trample work?"))
    assert any(n.startswith("702.19") for n in rule_ids(answer)), rule_ids(answer)
    book = engine.knowledge.book
    for citation, passage in zip(answer.citations, answer.passages, strict=True):
        assert passage.citation == citation
        if citation.kind == "rule":
            assert citation.release == RELEASE
            assert passage.text == book.get(citation.id).full_text()
    assert 0 < answer.generated_tokens <= 24
    # The streamed deltas are what the model wrote after the opening; the answer shows it only if supported.
    prose = answer.text if answer.prose_shown else answer.draft
    assert answer.lead is not None and prose.startswith(f"Rule {answer.lead.passage.citation.id} says that")
    assert "".join(deltas).strip()[:40] in prose
    assert answer.prose_shown or answer.text == NO_PROSE
    assert answer.lead is not None and answer.lead.passage == answer.passages[0]
    assert {"route", "retrieve", "assemble", "prefill", "generate", "total"} <= set(answer.timings_ms)
    assert answer.experts


async def test_fixed_expert_uses_its_adapter(engine: LocalEngine) -> None:
    answer = await engine.ask(AnswerRequest("How does trample work?", experts=(Expert.TEACH,)))
    assert answer.experts == [Expert.TEACH]
    record = engine.records[-1]
    assert record.experts == ["teach"] and record.adapters[0].startswith("teach-") and not record.fused


async def test_several_experts_fuse(engine: LocalEngine) -> None:
    answer = await engine.ask(
        AnswerRequest("Is deathtouch good with trample?", experts=(Expert.EXPLAIN, Expert.PREDICT))
    )
    assert answer.experts == [Expert.EXPLAIN, Expert.PREDICT]
    record = engine.records[-1]
    assert record.fused and len(record.adapters) == 2
    assert answer.text and answer.citations


async def test_a_looping_answer_stops_early_alone_and_fused(engine: LocalEngine) -> None:
    runner = engine._runner
    assert runner is not None
    before = runner.stop_on_repeat
    runner.stop_on_repeat = 1  # any token seen twice ends the answer: certain well within 24 tokens
    try:
        for experts in ((Expert.EXPLAIN,), (Expert.EXPLAIN, Expert.PREDICT)):
            answer = await engine.ask(AnswerRequest("Is deathtouch good with trample?", experts=experts))
            record = engine.records[-1]
            assert record.fused == (len(experts) > 1)
            assert record.finish_reason == "repetition" and 2 <= record.new_tokens < 24
            assert answer.text and answer.citations
    finally:
        runner.stop_on_repeat = before


async def test_invalid_request_fails_before_the_worker(engine: LocalEngine) -> None:
    await idle(engine)
    before = engine.worker.status().processed + engine.worker.status().failed
    with pytest.raises(InvalidRequest):
        await engine.ask(AnswerRequest("   "))
    assert engine.worker.status().processed + engine.worker.status().failed == before


async def test_status_and_lookups(engine: LocalEngine) -> None:
    status = engine.status()
    assert status.alive and status.queue_capacity == QUEUE
    assert status.adapters == {e.value: "v0" for e in Expert}
    assert status.latency_p95_ms is not None and status.latency_p95_ms > 0
    rule, subrules, release = engine.rule("702.19")
    assert release == RELEASE and "702.19b" in [r.number for r in subrules]
    assert engine.card("goyf").name == "Tarmogoyf"
    assert "Tarmogoyf" in engine.autocomplete_cards("tarm")
    assert all(n.startswith("702.1") for n in engine.autocomplete_rules("702.1"))


# ---------------------------------------------------------------------------------------------- sessions


async def test_two_turns_reuse_the_cache_and_match_recomputing(engine: LocalEngine) -> None:
    first = AnswerRequest("How does trample work?", experts=(Expert.EXPLAIN,), session_id="chat-a")
    follow = AnswerRequest(
        "What happens to the damage if the blocking creature leaves combat?",
        experts=(Expert.EXPLAIN,),
        session_id="chat-a",
    )
    reused_before = engine.kv_sessions.stats().reused_tokens
    a1 = await engine.ask(first)
    turn1 = engine.records[-1]
    a2 = await engine.ask(follow)
    turn2 = engine.records[-1]
    assert turn2.reused_tokens >= turn1.prompt_tokens  # the whole first prompt came from the cache
    assert engine.kv_sessions.stats().reused_tokens - reused_before >= turn2.reused_tokens

    # The same conversation with its KV cache dropped (history kept): recomputed, same answer.
    b1 = await engine.ask(AnswerRequest(first.question, experts=first.experts, session_id="chat-b"))
    await until(lambda: "chat-b" in engine.kv_sessions)  # stored by the worker right after it answered
    engine.kv_sessions.end("chat-b")
    b2 = await engine.ask(AnswerRequest(follow.question, experts=follow.experts, session_id="chat-b"))
    assert engine.records[-1].reused_tokens == 0
    assert b1.text == a1.text
    assert b2.text == a2.text and b2.citations == a2.citations

    await engine.end_session("chat-a")
    assert "chat-a" not in engine.kv_sessions
    assert engine.conversations.get("chat-a") == []


# ---------------------------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("admit_mid_batch", [False, True], ids=["next-batch", "mid-batch"])
async def test_queued_requests_batch_over_mixed_experts(
    engine: LocalEngine, hook: Hook, admit_mid_batch: bool
) -> None:
    runner = engine._runner
    assert runner is not None and runner.admit_mid_batch is False  # auto: off on CPU
    await idle(engine)
    hook.gate.clear()
    batches_before = engine.worker.status().batches
    questions = {
        "How does trample work?": ("702.19", Expert.EXPLAIN),
        "What does flying do?": ("702.9", Expert.TEACH),
        "How does deathtouch work?": ("702.2", Expert.REASON),
        "What does lifelink do?": ("702.15", Expert.EXPLAIN),
    }
    runner.admit_mid_batch = admit_mid_batch
    try:
        first = asyncio.create_task(engine.ask(AnswerRequest("What is the stack?", experts=(Expert.REASON,))))
        await until(lambda: hook.batches[-1:] == [["What is the stack?"]])  # held in the worker
        tasks = {
            q: asyncio.create_task(engine.ask(AnswerRequest(q, experts=(expert,))))
            for q, (_, expert) in questions.items()
        }
        await until(lambda: engine.worker.status().queue_depth == len(questions))
    finally:
        hook.gate.set()
    try:
        await first
        answers = {q: await t for q, t in tasks.items()}
        await idle(engine)
    finally:
        runner.admit_mid_batch = False
    for question, (prefix, expert) in questions.items():
        answer = answers[question]
        assert answer.question == question and answer.experts == [expert]
        assert any(n.startswith(prefix) for n in rule_ids(answer)), (question, rule_ids(answer))
    batched = {r.question: r for r in list(engine.records)[-5:]}
    if not admit_mid_batch:  # the held one alone, then the four together: four rows, three adapters
        assert engine.worker.status().batches - batches_before == 2
        assert hook.batches[-1] == list(questions)
        assert {q: r.batch_size for q, r in batched.items() if q in questions} == dict.fromkeys(questions, 4)
        assert len({batched[q].adapters[0].split("-")[0] for q in questions}) == 3
        return
    # One worker batch: three of the four queued while the first was held joined its generator batch at
    # its first decode step (batch_size 4); every answer runs to 24 tokens, so the fourth joined when those
    # rows ended, still in the same worker batch.
    assert engine.worker.status().batches - batches_before == 1
    assert hook.batches[-2:] == [list(questions)[:3], list(questions)[3:]]
    assert {q: r.batch_size for q, r in batched.items()} == {
        "What is the stack?": 4,
        **dict.fromkeys(list(questions)[:3], 4),
        "What does lifelink do?": 1,
    }
    assert len({batched[q].adapters[0].split("-")[0] for q in list(batched)[:4]}) == 3


async def test_overload_is_refused_at_once(engine: LocalEngine, hook: Hook) -> None:
    await idle(engine)
    hook.gate.clear()
    tasks: list[asyncio.Task] = []
    try:
        tasks.append(asyncio.create_task(engine.ask(AnswerRequest("What is a mulligan?"))))
        await until(lambda: hook.batches[-1:] == [["What is a mulligan?"]])  # held in the worker
        for i in range(QUEUE):
            tasks.append(asyncio.create_task(engine.ask(AnswerRequest(f"What is ward {i}?"))))
        await until(lambda: engine.worker.status().queue_depth == QUEUE)
        with pytest.raises(EngineOverloaded) as info:
            await engine.ask(AnswerRequest("One too many?"))
        assert info.value.ahead == QUEUE + 1
        for task in tasks[1:]:
            task.cancel()  # queued requests leave the queue at once
        await until(lambda: engine.worker.status().queue_depth == 0)
    finally:
        hook.gate.set()
    await tasks[0]
    await asyncio.gather(*tasks[1:], return_exceptions=True)


async def test_cancelling_aborts_the_generation(engine: LocalEngine) -> None:
    await idle(engine)  # an earlier test's request may still settle
    before = engine.worker.status()
    events = engine.generate(AnswerRequest("Explain the combat damage step in detail.", max_new_tokens=400))
    first = await anext(events)
    assert isinstance(first, LeadFound)  # the deciding rule comes first, before any prose
    assert isinstance(await anext(events), TokenDelta)
    await events.aclose()
    await until(lambda: engine.worker.status().cancelled == before.cancelled + 1)
    await until(lambda: engine.worker.status().in_flight == 0)
    assert engine.worker.status().processed == before.processed  # it never finished
    answer = await engine.ask(AnswerRequest("What is flying?"))  # and the engine goes on
    assert answer.citations


async def test_event_loop_keeps_ticking_while_generating(engine: LocalEngine) -> None:
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await engine.ask(AnswerRequest("How does first strike work?"))
    duration = time.perf_counter() - started
    stop.set()
    await task
    assert len(gaps) >= 20
    assert max(gaps) < duration / 4, (max(gaps), duration)


async def test_worker_crash_is_a_clear_error_and_the_engine_recovers(engine: LocalEngine, hook: Hook) -> None:
    restarts = engine.status().restarts
    hook.crash_on = "CRASH"
    try:
        with pytest.raises(GenerationError) as info:
            await engine.ask(AnswerRequest("CRASH: how does trample work?"))
    finally:
        hook.crash_on = None
    assert "simulated CUDA error" in str(info.value)
    await until(lambda: engine.status().restarts > restarts and engine.status().alive)
    assert "simulated CUDA error" in (engine.status().last_error or "")
    answer = await engine.ask(AnswerRequest("How does trample work?"))
    assert any(n.startswith("702.19") for n in rule_ids(answer))
    assert engine.status().adapters == {e.value: "v0" for e in Expert}


async def test_warm_up_answers_frequent_questions(engine: LocalEngine) -> None:
    answers = await engine.warm_up(questions=("What is flying?",), max_new_tokens=4)
    assert len(answers) == 1 and answers[0].citations


# ---------------------------------------------------------------------------------------------- adapters


async def test_a_thread_continues_after_a_restart_from_its_stored_conversation(
    engine: LocalEngine, local_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The bot keeps conversations in a file: a new process answers a follow-up with the whole history."""
    path = tmp_path / "conversations.sqlite3"
    first_turn = AnswerRequest("How does trample work?", experts=(Expert.EXPLAIN,), session_id="thread-1")
    follow_up = AnswerRequest("And if the blocker dies?", experts=(Expert.EXPLAIN,), session_id="thread-1")

    async def one_process(request: AnswerRequest) -> tuple[RequestRecord, list[dict[str, str]]]:
        """Start an engine on the conversation file, answer, stop: KV caches and the worker go, the file stays."""
        process = LocalEngine(
            local_settings(),
            knowledge=engine.knowledge,
            conversations=ConversationStore(10, 3600, path),
        )
        await process.start()
        try:
            await process.ask(request)
            return process.records[-1], process.conversations.get("thread-1")
        finally:
            await process.close()

    await one_process(first_turn)
    restarted, history = await one_process(follow_up)
    # The same two turns in one process, for reference: the restarted prompt is the very same prompt.
    await engine.ask(AnswerRequest(first_turn.question, experts=first_turn.experts, session_id="thread-ref"))
    await engine.ask(AnswerRequest(follow_up.question, experts=follow_up.experts, session_id="thread-ref"))
    assert restarted.reused_tokens == 0  # nothing cached survived the restart
    assert restarted.prompt_tokens == engine.records[-1].prompt_tokens
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert first_turn.question in history[0]["content"] and follow_up.question in history[2]["content"]
    await engine.end_session("thread-ref")


async def test_a_corrupt_adapter_disables_only_its_expert(
    engine: LocalEngine,
    real_engine_state_dir: Path,
    local_settings: Callable[..., Settings],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    state = tmp_path_factory.mktemp("corrupt-adapter")
    shutil.copytree(real_engine_state_dir / "adapters", state / "adapters")
    (state / "adapters" / "teach" / "v0" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    other = LocalEngine(local_settings(state), knowledge=engine.knowledge)
    await other.start()
    try:
        assert "teach" not in other.status().adapters and "explain" in other.status().adapters
        with pytest.raises(AdapterError) as info:
            await other.ask(AnswerRequest("How does trample work?", experts=(Expert.TEACH,)))
        assert info.value.expert == "teach"
        answer = await other.ask(AnswerRequest("How does trample work?", experts=(Expert.EXPLAIN,)))
        assert any(n.startswith("702.19") for n in rule_ids(answer))
        routed = await other.ask(AnswerRequest("I'm new: teach me how trample works"))
        assert routed.citations
        if routed.experts == [Expert.TEACH]:  # the router wanted only TEACH: its prompt, on the base model
            assert other.records[-1].adapters == ["__base__"]
        else:
            assert Expert.TEACH not in routed.experts
    finally:
        await other.close()
