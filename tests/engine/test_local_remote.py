"""LocalEngine with generation on a remote OpenAI-compatible server (a real HTTP server on loopback).

Routing, retrieval, the grounding guard and citations stay in-process; only the chat messages travel. The
scripted server of test_remote.py records every request, so the tests see exactly what was sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from engine.api import Answer, AnswerRequest, Expert, TokenDelta
from engine.errors import AdapterError
from engine.local import LocalEngine
from hexcore.settings import EngineSettings, KnowledgeSettings, PathSettings, Settings
from tests.engine.scripted_server import ScriptedServer, running_server

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with running_server() as srv:
        srv.default_words = [
            "Trample ",
            "lets ",
            "excess ",
            "damage ",
            "through ",
            "(see ",
            "rule ",
            "999.9z).",
        ]
        yield srv


@pytest.fixture(scope="module")
def state_dir(real_engine_state_dir: Path) -> Path:
    return real_engine_state_dir


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(server: ScriptedServer, state_dir: Path, data_dir: Path) -> AsyncIterator[LocalEngine]:
    settings = Settings(
        paths=PathSettings(
            data_dir=data_dir,
            state_dir=state_dir,
            rules_release="2026-01-16",
            model_cache=PathSettings().model_cache_dir,
        ),
        knowledge=KnowledgeSettings(context_tokens=300),
        engine=EngineSettings(backend="remote", remote_url=server.url, remote_retries=0, max_new_tokens=24),
    )
    eng = LocalEngine(settings)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.close()


async def test_remote_answer_is_grounded_and_cited_in_process(engine: LocalEngine, server: ScriptedServer):
    deltas, answer = [], None
    async for event in engine.generate(AnswerRequest("How does trample work?", experts=(Expert.REASON,))):
        if isinstance(event, TokenDelta):
            deltas.append(event.text)
        elif isinstance(event, Answer):
            answer = event
    assert answer is not None and answer.experts == [Expert.REASON]
    sent = server.requests[-1]
    assert sent["model"] == "reason" and sent["stream"] is True and sent["max_tokens"] == 24
    assert "How does trample work?" in sent["messages"][-1]["content"]
    # citations come from the local index, with the release they quote, and the prompt held those passages
    assert any(
        c.kind == "rule" and c.id.startswith("702.19") and c.release == "2026-01-16" for c in answer.citations
    )
    assert all(
        p.text in sent["messages"][-1]["content"] or p.text in str(sent["messages"]) for p in answer.passages
    )
    # the grounding guard removed the invented rule number, in the stream and in the final text
    assert "999.9z" not in answer.text and "999.9z" not in "".join(deltas)
    # the server's prose cites no quoted rule, so the same support check as for the local model hides it
    assert answer.draft.startswith("Trample lets excess damage through") and not answer.prose_shown
    assert answer.lead is not None and answer.lead.passage.citation.id.startswith("702.19")
    status = engine.status()
    assert status.alive and status.adapters == {"reason": "remote:reason", "explain": "remote:explain"}


async def test_a_board_question_is_answered_by_the_calculator_without_a_server_call(
    engine: LocalEngine, server: ScriptedServer
):
    before = len(server.requests)
    answer = await engine.ask(AnswerRequest("A 6/6 trampler is blocked by a 3/3, how much damage do I take?"))
    assert answer.verdict == "You take 3 damage." and answer.support == "calculator"
    assert len(server.requests) == before  # the server never saw it


async def test_expert_without_a_module_on_the_server_is_an_adapter_error(
    engine: LocalEngine, server: ScriptedServer
):
    server.by_model["teach"] = {
        "kind": "status",
        "status": 404,
        "body": {"error": {"message": "no such model"}},
    }
    with pytest.raises(AdapterError):
        await engine.ask(AnswerRequest("Teach me trample", experts=(Expert.TEACH,)))
    answer = await engine.ask(
        AnswerRequest("What is trample?", experts=(Expert.EXPLAIN,))
    )  # others unaffected
    assert answer.citations


async def test_follow_up_sends_the_conversation(engine: LocalEngine, server: ScriptedServer):
    await engine.ask(AnswerRequest("How does trample work?", experts=(Expert.REASON,), session_id="t1"))
    await engine.ask(AnswerRequest("And with deathtouch?", experts=(Expert.REASON,), session_id="t1"))
    messages = server.requests[-1]["messages"]
    assert sum(m["role"] == "user" for m in messages) == 2 and any(m["role"] == "assistant" for m in messages)
    await engine.end_session("t1")
