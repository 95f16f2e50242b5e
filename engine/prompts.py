"""What the model is told: one system prompt per expert, the chat messages of a turn, the training text.

Layout of a conversation (ChatML, the template embedded in the SmolLM2 GGUF)::

    system     expert instructions (fixed per expert, so it is a reusable cache prefix)
    user       Rules and cards: <context of turn 1>  Question: <question 1>
    assistant  <answer 1>
    user       Rules and cards: <context of turn 2>  Question: <question 2>
    assistant  ...

Each turn's retrieved context goes into *its own* user message, and earlier turns are repeated verbatim,
so turn N's prompt starts with exactly the tokens turn N-1 saw and generated: the KV-cache session
(``engine.sessions``) then only prefills the newest message. The system prompt depends on the expert
only; switching expert also switches LoRA adapter, which invalidates the cache anyway.

The model is 135M parameters and slow on CPU, so the instructions are short and plain. Its wording is
never trusted for correctness: the bot shows the cited passages verbatim next to the answer.

``format_example`` renders a training example as the exact text the model sees when serving (system +
user + assistant answer + end marker), so an adapter trains on the serving distribution.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from engine.api import Expert

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from knowledge.models import Passage

Message = dict[str, str]

BASE_INSTRUCTIONS = (
    "You are Hexcore, a Magic: The Gathering rules judge. "
    "Answer only from the rules and cards quoted in the user's message. "
    "Cite the rule numbers you use, like (CR 702.19b). "
    "If the quoted text does not answer the question, say so. Be brief."
)

EXPERT_INSTRUCTIONS: dict[Expert, str] = {
    Expert.REASON: "Work through the situation step by step, applying each quoted rule in order.",
    Expert.EXPLAIN: "Explain the rule or term in plain words: what it does and when it applies.",
    Expert.TEACH: "Teach a new player: explain simply, then give one short example.",
    Expert.PREDICT: "Say what happens next, or which play is better, and why.",
    Expert.RETROSPECT: "Review the play: what was right, what went wrong, and which rule applied.",
}

CONTEXT_HEADER = "Rules and cards:"
NO_CONTEXT = "(No rules or cards were found for this question.)"
QUESTION_HEADER = "Question:"

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def _experts(expert_or_experts: Expert | str | Iterable[Expert | str]) -> list[Expert]:
    if isinstance(expert_or_experts, str):  # Expert is a StrEnum, so this covers both
        items: list[Expert | str] = [expert_or_experts]
    else:
        items = list(expert_or_experts)
    experts = list(dict.fromkeys(Expert(e) for e in items))
    if not experts:
        raise ValueError("at least one expert is needed")
    return experts


def system_prompt(expert_or_experts: Expert | str | Iterable[Expert | str]) -> str:
    """The base instructions plus each expert's own (several experts: their instructions, in order)."""
    return " ".join([BASE_INSTRUCTIONS, *(EXPERT_INSTRUCTIONS[e] for e in _experts(expert_or_experts))])


def user_message(question: str, context_text: str | None) -> str:
    context = (context_text or "").strip() or NO_CONTEXT
    return f"{CONTEXT_HEADER}\n{context}\n\n{QUESTION_HEADER} {question.strip()}"


def build_messages(
    expert_or_experts: Expert | str | Iterable[Expert | str],
    question: str,
    context_text: str | None,
    history: Sequence[Message] = (),
) -> list[Message]:
    """The chat messages for one turn: system, the earlier turns verbatim, then this turn's user message.

    ``history`` is the user/assistant messages of earlier turns exactly as they were sent and answered
    (see :func:`next_history`); keep it verbatim or the session cache cannot be reused.
    """
    for message in history:
        if message.get("role") not in ("user", "assistant"):
            raise ValueError(
                f"history may hold only user and assistant messages, not {message.get('role')!r}"
            )
    return [
        {"role": "system", "content": system_prompt(expert_or_experts)},
        *({"role": m["role"], "content": m["content"]} for m in history),
        {"role": "user", "content": user_message(question, context_text)},
    ]


ANSWER_OPENING = "Rule {number} says that"
"""How an answer starts when its lead is a rule: the model continues by restating and applying it."""
RULING_OPENING = "The ruling on {card} says that"


def answer_opening(passage: Passage) -> str:
    """The opening the model continues from: it names the passage that decides the question."""
    citation = passage.citation
    if citation.kind == "rule":
        return ANSWER_OPENING.format(number=citation.id)
    if citation.kind == "ruling":
        return RULING_OPENING.format(card=citation.id)
    return ""


def next_history(messages: Sequence[Message], answer: str) -> list[Message]:
    """The history for the next turn: this turn's messages (without the system prompt) plus the answer."""
    return [dict(m) for m in messages if m["role"] != "system"] + [{"role": "assistant", "content": answer}]


def trim_history(history: Sequence[Message], max_chars: int) -> list[Message]:
    """Drop the oldest whole turns until the history's text fits ``max_chars`` (~4 characters a token).

    Dropping a turn shifts every later token, so the next turn misses the session cache once; after
    that, reuse resumes. Keep ``max_chars`` well inside the model's context window.
    """
    kept = list(history)
    while kept and sum(len(m["content"]) for m in kept) > max_chars:
        # Drop up to and including the first assistant message (one user/assistant turn).
        cut = next((i for i, m in enumerate(kept) if m["role"] == "assistant"), len(kept) - 1)
        kept = kept[cut + 1 :]
    return kept


# ---- rendering ----


def render_chatml(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """ChatML text exactly as the embedded model's chat template renders it (checked in the tests)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    """The prompt text through the tokenizer's own chat template (ChatML when it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return render_chatml(messages)


def encode_messages(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> list[int]:
    """Token ids of the prompt, ending with the assistant header the model continues from."""
    # The template already writes every special token, so the tokenizer must not add a BOS of its own.
    return list(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])


def format_prompt(
    expert: Expert | str, question: str, context: str | None, history: Sequence[Message] = ()
) -> str:
    """The serving prompt as plain text (ChatML): the part of a training example the loss should skip."""
    return render_chatml(build_messages(expert, question, context, history))


def format_example(
    expert: Expert | str, question: str, context: str | None, answer: str, history: Sequence[Message] = ()
) -> str:
    """A whole training example: the serving prompt, the answer, and the end marker the model must learn.

    ``format_example(...).startswith(format_prompt(...))`` always holds, so a trainer can mask the prompt
    by its length.
    """
    return format_prompt(expert, question, context, history) + answer.strip() + f"{IM_END}\n"
