"""``RemoteRunner`` on its own, against the scripted OpenAI-compatible server on loopback (real HTTP), the real
knowledge base and router, driven with ``WorkItem``s as the worker would.

The remote runner shares the answer path (``engine.runner_core``) with the local one: the same lead first,
the same answers without the model, the same per-request failures (a bug in one request fails only it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from engine.api import Answer, AnswerRequest, Expert, LeadFound, TokenDelta
from engine.conversations import ConversationStore
from engine.errors import GenerationError, InvalidRequest
from engine.pipeline import AnswerPipeline, RequestRecord
from engine.remote import RemoteBackend
from engine.remote_runner import RemoteRunner
from hexcore.settings import EngineSettings, Settings
from tests.engine.scripted_server import ScriptedServer, running_server
from tests.engine.work_items import drain, items_for

pytestmark = pytest.mark.slow  # loads the real knowledge base

TRAMPLE = "How does trample work when the blocker dies?"
BOARD = "A 6/6 trampler is blocked by a 3/3, how much damage do I take?"


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with running_server() as srv:
        srv.default_words = ["Excess ", "damage ", "goes ", "through."]
        yield srv


@pytest.fixture(scope="module")
def pipeline(real_engine_settings: Callable[..., Settings]) -> AnswerPipeline:
    from engine.model_loader import load_embedded_tokenizer
    from engine.router import load_or_train_router
    from knowledge.base import KnowledgeBase
    from knowledge.embeddings import get_embedder

    settings = real_engine_settings(context_tokens=200)
    router = load_or_train_router(settings.paths.state_dir, get_embedder(), 0.4)
    tokenizer = load_embedded_tokenizer(settings.paths)
    return AnswerPipeline(
        KnowledgeBase.load(settings), router, tokenizer, context_tokens=200, open_with_lead=False
    )


@pytest.fixture
def runner(
    pipeline: AnswerPipeline, server: ScriptedServer
) -> Iterator[tuple[RemoteRunner, list[RequestRecord]]]:
    server.requests.clear()
    backend = RemoteBackend.from_settings(
        EngineSettings(backend="remote", remote_url=server.url, remote_retries=0)
    )
    records: list[RequestRecord] = []
    made = RemoteRunner(pipeline, backend, ConversationStore(8, 600.0), on_record=records.append)
    yield made, records
    made.close()


async def test_the_lead_comes_first_and_the_best_expert_is_asked(runner, server: ScriptedServer) -> None:
    remote, records = runner
    (item,) = items_for(AnswerRequest(TRAMPLE, experts=(Expert.TEACH, Expert.REASON)))
    await asyncio.to_thread(remote.run, [item])
    events, answer = await drain(item)
    assert isinstance(events[0], LeadFound) and isinstance(answer, Answer)
    assert "".join(e.text for e in events[1:] if isinstance(e, TokenDelta)) == "Excess damage goes through."
    (sent,) = server.requests
    assert sent["model"] == "teach"  # no fusion over an OpenAI-compatible API: the best expert answers
    (record,) = records
    assert record.adapters == ["remote:teach"] and record.new_tokens == 4 and not record.fused


async def test_a_board_question_never_reaches_the_server(runner, server: ScriptedServer) -> None:
    remote, records = runner
    (item,) = items_for(AnswerRequest(BOARD, session_id="b1"))
    await asyncio.to_thread(remote.run, [item])
    events, answer = await drain(item)
    assert events == [] and answer.verdict == "You take 3 damage."
    assert server.requests == [] and records[0].finish_reason == "calculator"
    assert "You take 3 damage." in remote.core.conversations.get("b1")[-1]["content"]
    assert remote.pipeline.scenarios.get("b1") is not None  # a follow-up in the thread may change the board
    remote.end_session("b1")
    assert remote.pipeline.scenarios.get("b1") is None


async def test_failures_stay_with_their_request(runner, server: ScriptedServer, monkeypatch) -> None:
    remote, _ = runner
    real_prepare = remote.pipeline.prepare

    def prepare(request: AnswerRequest, *args: Any, **kwargs: Any) -> Any:
        if "explode" in request.question:
            raise KeyError("a bug")  # before the shared core, this restarted the worker
        return real_prepare(request, *args, **kwargs)

    monkeypatch.setattr(remote.pipeline, "prepare", prepare)
    server.plan.append({"kind": "status", "status": 400, "body": {"error": {"message": "prompt too long"}}})
    refused, bug, good = items_for(
        AnswerRequest(TRAMPLE, experts=(Expert.EXPLAIN,)),
        AnswerRequest("explode " + TRAMPLE),
        AnswerRequest(TRAMPLE, experts=(Expert.EXPLAIN,)),
    )
    await asyncio.to_thread(remote.run, [refused, bug, good])
    outcomes = [(await drain(item))[1] for item in (refused, bug, good)]
    assert isinstance(outcomes[0], InvalidRequest) or isinstance(outcomes[2], InvalidRequest)
    assert isinstance(outcomes[1], GenerationError) and "KeyError" in str(outcomes[1])
    assert sum(isinstance(o, Answer) for o in outcomes) == 1 and len(server.requests) == 2


async def test_serving_versions_come_from_the_server(runner) -> None:
    remote, _ = runner
    assert remote.kv_sessions is None and remote.adapter_stats() is None
    assert all(version.startswith("remote:") for version in remote.serving_versions().values())
    assert remote.reload_adapters() == {}
