"""The runner core's small parts, without a model: how a failure becomes the request's error, and the turn's
guarded stream. The whole prepare -> generate -> settle path is tested through both runners
(test_runner.py, test_remote_runner.py)."""

from __future__ import annotations

import pytest

from engine.api import AnswerRequest, TokenDelta
from engine.errors import AdapterError, GenerationError
from engine.runner_core import TurnStream, failing
from knowledge.errors import KnowledgeError
from tests.engine.work_items import drain, items_for


@pytest.mark.parametrize(
    ("raised", "kind", "says"),
    [
        (AdapterError("teach", "missing"), AdapterError, "adapter 'teach': missing"),
        (KnowledgeError("index gone"), GenerationError, "retrieval failed: index gone"),
        (ZeroDivisionError("oops"), GenerationError, "preparing the answer failed: ZeroDivisionError: oops"),
    ],
)
async def test_a_failure_becomes_this_requests_typed_error(raised: Exception, kind: type, says: str) -> None:
    (item,) = items_for(AnswerRequest("How does trample work?"))
    with failing(item, "preparing the answer"):
        raise raised
    _, error = await drain(item)
    assert type(error) is kind and says in str(error)


async def test_nothing_raised_leaves_the_request_alone() -> None:
    (item,) = items_for(AnswerRequest("How does trample work?"))
    with failing(item, "preparing the answer"):
        pass
    assert item.outcome is None


class _Turn:
    allowed_rules = {"702.19b"}


async def test_the_stream_guards_rule_numbers_and_flushes_its_tail() -> None:
    (item,) = items_for(AnswerRequest("How does trample work?"))
    stream = TurnStream(item, _Turn())  # type: ignore[arg-type]
    for delta in ["See 702.19b ", "and 999.9z ", "for more"]:
        stream.feed(delta)
    stream.close()
    item.finish(None)
    events, _ = await drain(item)
    text = "".join(e.text for e in events if isinstance(e, TokenDelta))
    assert "702.19b" in text and "999.9z" not in text and text.endswith("for more")
