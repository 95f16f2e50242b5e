"""The grounded answer pipeline: route -> plan experts -> sources -> assemble -> prompt, then guard and check.

:meth:`AnswerPipeline.prepare` turns an :class:`~engine.api.AnswerRequest` into a :class:`Turn`, top-down: the
experts (the request's own, or the router's choice), which of them answer with which adapters (the runner's
planner over ``engine.experts.plan_experts``), the sources (the rules calculator's for a board it understood,
else the retrieved passages and the lead that decides the question), those passages assembled whole under the
context token budget (counted with the model's real tokenizer), and the expert's chat prompt as token ids.
The runners (``engine.runner_core``) generate the turn's text; :meth:`AnswerPipeline.finish` turns it into the
:class:`~engine.api.Answer`: it cites exactly the passages placed in the prompt (rule numbers with their rules
release, card names), carries those passages in full for the bot to quote verbatim, runs the grounding guard
(``engine.grounding``) so the text cites no rule it was not given, and shows the prose only when the support
check (``engine.support``) finds every sentence backed by the quoted sources.

The answer must be right even though a 135M model writes weak prose: the lead and the passages carry it.

Multi-turn: a session's earlier turns are repeated verbatim in the next prompt (the history is kept by the
caller, ``engine.conversations.ConversationStore``), so the generator's KV-cache session only prefills the new
message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.api import Answer, AnswerRequest, Expert
from engine.calculator import Calculated, ScenarioMemory, calculate
from engine.errors import InvalidRequest
from engine.experts import Planner, Routing, serve_all
from engine.grounding import allowed_rule_numbers, guard_text
from engine.language import check_english
from engine.prompts import (
    QUESTION_HEADER,
    Message,
    answer_opening,
    build_messages,
    encode_messages,
    trim_history,
)
from engine.support import check_support
from knowledge.models import RetrievalResult

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from engine.router import Router
    from knowledge.base import KnowledgeBase
    from knowledge.context import AssembledContext
    from knowledge.lead import Lead, LeadSelector
    from knowledge.models import Passage

log = logging.getLogger(__name__)

RETRIEVE_K = 6
"""Passages retrieved per question before assembly; more mostly adds noise for a small model."""
HISTORY_CHARS = 9600
"""Earlier turns kept in a prompt (~2400 tokens): well inside the context window, older turns are dropped."""
MAX_QUESTION_CHARS = 2000
"""The bot allows 1000 characters plus a card name; the CLI the same order of magnitude."""
MAX_NEW_TOKENS = 4096
FOLLOW_UP_WORDS = 8
"""A question this short in a conversation ("and with deathtouch?") is retrieved with the previous one."""
NO_PROSE = "The rule quoted first decides this. No explanation could be checked against it, so none is shown."
NOT_FOUND = (
    "I found no rule or card text that answers this. If you know the rule or the card, "
    "look it up with /rule (e.g. /rule 702.19b) or /card."
)
RELEVANCE_THRESHOLD = 0.15
"""Least cosine between the question and the lead's best sentence for the answer to quote anything.

Calibrated (``training.relevance_calibration``, figures in docs/BENCHMARKS.md) on questions built from the
rules (CR example situations and glossary terms asked about) against off-topic questions
(training/data/offtopic_questions.txt): the highest threshold that keeps 98% of the rules' questions. With
the question understanding and per-clause search of retrieval it turns away only 18% of the off-topic ones
(two thirds with the plain hybrid): a real question wrongly turned away costs more than an off-topic one
answered with a plainly unrelated rule. Never calibrated on the evaluation question sets."""


def validate_request(request: AnswerRequest, default_max_new_tokens: int) -> AnswerRequest:
    """The request with its question stripped and its experts and token budget checked.

    Raises ``InvalidRequest`` with a message fit for the user.
    """
    question = (request.question or "").strip()
    if not question:
        raise InvalidRequest("Please ask a question.")
    check_english(question)
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidRequest(
            f"That question is too long ({len(question)} characters; the limit is {MAX_QUESTION_CHARS})."
        )
    experts: tuple[Expert, ...] | None = None
    if request.experts is not None:
        try:
            experts = tuple(dict.fromkeys(Expert(e) for e in request.experts))
        except ValueError:
            known = ", ".join(e.value for e in Expert)
            raise InvalidRequest(f"Unknown expert in {list(request.experts)}; choose from {known}.") from None
        if not experts:
            experts = None
    max_new = request.max_new_tokens if request.max_new_tokens is not None else default_max_new_tokens
    if not 1 <= max_new <= MAX_NEW_TOKENS:
        raise InvalidRequest(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}.")
    return AnswerRequest(
        question=question,
        experts=experts,
        session_id=request.session_id,
        max_new_tokens=max_new,
        user_id=request.user_id,
    )


@dataclass(slots=True)
class Turn:
    """One prepared request: everything generation needs, and everything the answer will cite."""

    request: AnswerRequest
    experts: list[Expert]
    """The experts that answer, best first (their instructions shape the prompt)."""
    adapters: list[Expert | None]
    """What generates: one adapter (None: the base model), or several fused (``engine.experts``)."""
    routed: bool
    """True when the router chose the experts (False: the request fixed them)."""
    scores: dict[Expert, float]
    context: AssembledContext
    messages: list[Message]
    input_ids: list[int]
    max_new_tokens: int
    allowed_rules: set[str]
    """Rule numbers the answer may cite (see ``engine.grounding``)."""
    submitted_at: float
    """``time.perf_counter()`` when the request was admitted."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    lead: Lead | None = None
    """The rule or ruling that decides the question (shown first); None when nothing relevant was found."""
    opening: str = ""
    """The start of the answer, written for the model (it continues from it): it names the lead rule."""
    calculated: Calculated | None = None
    """The rules calculator's answer to a board-state question: then no prose is generated."""

    @property
    def generates(self) -> bool:
        """Whether the model writes this turn's prose (not when nothing relevant was found, nor when the
        calculator answered)."""
        return self.lead is not None and self.calculated is None

    @property
    def fixed_text(self) -> str:
        """The answer text of a turn the model does not write (what the conversation remembers)."""
        if self.calculated is None:
            return ""
        return "\n".join(filter(None, [self.calculated.verdict, self.calculated.steps_text]))

    @property
    def passages(self) -> list[Passage]:
        return self.context.passages


class AnswerPipeline:
    """Routing, retrieval, assembly and prompting for the engine's worker thread (thread-safe)."""

    def __init__(
        self,
        knowledge: KnowledgeBase,
        router: Router | None,
        tokenizer: PreTrainedTokenizerBase,
        *,
        context_tokens: int,
        retrieve_k: int = RETRIEVE_K,
        history_chars: int = HISTORY_CHARS,
        lead_selector: LeadSelector | None = None,
        relevance_threshold: float = RELEVANCE_THRESHOLD,
        open_with_lead: bool = True,
    ) -> None:
        self.knowledge = knowledge
        self.router = router
        self.tokenizer = tokenizer
        self.context_tokens = context_tokens
        self.retrieve_k = retrieve_k
        self.history_chars = history_chars
        self._lead_selector = lead_selector
        self.relevance_threshold = relevance_threshold
        self.open_with_lead = open_with_lead
        """Start the model's answer with the lead rule's number (a server with its own template: off)."""
        self.scenarios = ScenarioMemory()
        """Each conversation's last calculator scenario, for follow-ups that change it."""

    @property
    def lead_selector(self) -> LeadSelector:
        if self._lead_selector is None:
            from knowledge.embeddings import get_embedder
            from knowledge.lead import LeadSelector

            embedder = get_embedder(self.knowledge.settings.knowledge.embedding_model)
            self._lead_selector = LeadSelector(embedder.encode)
        return self._lead_selector

    def find_lead(self, question: str, results: Sequence[RetrievalResult]) -> Lead | None:
        """The deciding rule among ``results``, or None when none is relevant enough to quote."""
        lead = self.lead_selector.select(question, results)
        if lead is None or lead.score < self.relevance_threshold:
            return None
        return lead

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def route(self, request: AnswerRequest) -> Routing:
        """The request's fixed experts, else the router's choice (best first)."""
        if request.experts:
            return Routing(list(request.experts), {}, routed=False)
        if self.router is None:
            return Routing([Expert.EXPLAIN], {}, routed=True)
        started = time.perf_counter()
        decision = self.router.route(request.question)
        ms = (time.perf_counter() - started) * 1000
        return Routing(list(decision.experts), dict(decision.scores), routed=True, ms=ms)

    def retrieval_query(self, question: str, history: Sequence[Message]) -> str:
        """The question, plus the previous question when this one is a short follow-up in a conversation."""
        if not history or len(question.split()) >= FOLLOW_UP_WORDS:
            return question
        for message in reversed(history):
            if message["role"] == "user" and QUESTION_HEADER in message["content"]:
                previous = message["content"].rsplit(QUESTION_HEADER, 1)[1].strip()
                return f"{previous}\n{question}"
        return question

    def prepare(
        self,
        request: AnswerRequest,
        history: Sequence[Message] = (),
        submitted_at: float | None = None,
        planner: Planner = serve_all,
        timings: dict[str, float] | None = None,
    ) -> Turn:
        """Route, plan the experts (``planner``: the runner's, it knows what it serves), find the sources
        (the calculator, else retrieval and the lead), assemble them and build the prompt for one request.

        ``timings``: the stages the caller already timed (the runner core: queue, history); else the queue
        time is taken from ``submitted_at`` now."""
        submitted_at = time.perf_counter() if submitted_at is None else submitted_at
        timings = dict(timings or {})
        timings.setdefault("queue", (time.perf_counter() - submitted_at) * 1000)
        routing = self.route(request)
        timings["route"] = routing.ms
        clock = time.perf_counter()
        plan = planner(routing)
        clock = _lap(timings, "adapters", clock)
        history = trim_history(history, self.history_chars)
        results, lead, calculated = self._sources(request, history, timings)
        clock = time.perf_counter()
        context = self.knowledge.assemble(results, self.context_tokens, self.count_tokens)
        messages = build_messages(plan.experts, request.question, context.text, history)
        input_ids = encode_messages(self.tokenizer, messages)
        opening = ""
        if lead is not None and calculated is None and self.open_with_lead:
            opening = answer_opening(lead.passage)
            input_ids += self.tokenizer(opening, add_special_tokens=False)["input_ids"]
        _lap(timings, "assemble", clock)
        return Turn(
            request=request,
            experts=plan.experts,
            adapters=plan.adapters,
            routed=routing.routed,
            scores=routing.scores,
            context=context,
            messages=messages,
            input_ids=input_ids,
            max_new_tokens=request.max_new_tokens or 1,
            allowed_rules=allowed_rule_numbers(context.passages),
            submitted_at=submitted_at,
            timings_ms=timings,
            lead=lead,
            opening=opening,
            calculated=calculated,
        )

    def _sources(
        self, request: AnswerRequest, history: Sequence[Message], timings: dict[str, float]
    ) -> tuple[list[RetrievalResult], Lead | None, Calculated | None]:
        """What the answer quotes, the lead first: the calculator's rules for a board it understood, else the
        retrieved passages; nothing when no passage is relevant enough."""
        clock = time.perf_counter()
        calculated = calculate(self.knowledge, request.question, self.scenarios.get(request.session_id))
        clock = _lap(timings, "calculator", clock)
        if calculated is not None:  # a board-state question: the calculator's rules are the sources
            self.scenarios.put(request.session_id, calculated.solution.scenario)
            results = [RetrievalResult(p, 1.0, frozenset({"calculator"})) for p in calculated.passages]
            lead = self.lead_selector.select(request.question, results, ranked=False)
        else:
            query = self.retrieval_query(request.question, history)
            results = self.knowledge.search(query, k=self.retrieve_k)
            clock = _lap(timings, "retrieve", clock)
            lead = self.find_lead(query, results)
        _lap(timings, "lead", clock)
        if lead is None:  # nothing is about the question: quote nothing rather than unrelated rules
            return [], None, calculated
        # The deciding rule goes first in the prompt, as in the answer.
        return sorted(results, key=lambda r: r.passage.key != lead.passage.key), lead, calculated

    def finish(
        self,
        turn: Turn,
        text: str,
        *,
        prefill_ms: float,
        generate_ms: float,
        generated_tokens: int,
    ) -> Answer:
        """The final answer: the lead, the prose when it passes the support check, the quoted passages.

        ``text`` is what the model generated after the turn's opening."""
        report = guard_text(turn.opening + text, turn.allowed_rules)
        guarded = report.text.strip()
        timings = dict(turn.timings_ms)
        timings["prefill"] = prefill_ms
        timings["generate"] = generate_ms
        passages = list(turn.context.passages)
        answer = Answer(
            question=turn.request.question,
            experts=list(turn.experts),
            text=NOT_FOUND,
            citations=[p.citation for p in passages],
            passages=passages,
            session_id=turn.request.session_id,
            generated_tokens=generated_tokens,
            text_cites=report.kept,
            lead=turn.lead,
        )
        if turn.calculated is not None:
            answer.verdict, answer.text = turn.calculated.verdict, turn.calculated.steps_text
            answer.text_cites, answer.support = list(turn.calculated.solution.rules), "calculator"
        elif turn.lead is not None:
            quoted = {p.citation.id: p.text for p in passages}
            support = check_support(guarded, quoted, turn.request.question, report.kept)
            answer.support = support.reason
            answer.prose_shown = support.shown
            if support.shown:
                answer.text = guarded
            else:
                answer.text, answer.draft = NO_PROSE, guarded or None
        timings["total"] = (time.perf_counter() - turn.submitted_at) * 1000
        answer.timings_ms = {k: round(v, 2) for k, v in timings.items()}
        return answer


def _lap(timings: dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    timings[stage] = (now - since) * 1000
    return now


@dataclass(slots=True)
class RequestRecord:
    """What one answered request cost (``LocalEngine.records``: benchmarks, tests, diagnostics)."""

    question: str
    experts: list[str]
    adapters: list[str]
    fused: bool
    prompt_tokens: int
    reused_tokens: int
    new_tokens: int
    batch_size: int
    finish_reason: str
    timings_ms: dict[str, float]
