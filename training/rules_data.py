"""Training examples derived from the Comprehensive Rules, one framing per expert.

The rules are the only large, authoritative text we have, so each expert's examples reframe them in the
shape of the questions that expert answers. Every example carries the rule's own passage as its context,
rendered exactly as retrieval renders it at serving time (``knowledge.context.render_passage``), and every
answer is rule-first, as served: it opens "Rule 702.19b says that ..." (the opening the engine starts each
answer with, ``engine.prompts.ANSWER_OPENING``), restates the rule's first sentence, then applies it.

* EXPLAIN  - glossary terms: "What does Trample mean?" -> the glossary definition, citing the rule it points
  to; keyword headings (701.x/702.x): "How does trample work?" -> the keyword's first sub-rules.
* REASON   - rule examples: the example's first sentence is the situation, the rest is the worked outcome;
  the answer states the rule, then applies it. Conditional rules ("If X, Y."): "What happens if X?" ->
  "CR n applies: Y".
* TEACH    - titled rules with sub-rules ("Trample", "Card Types"): "I'm new, teach me about X" -> the first
  sentence of the first sub-rule in plain form plus one printed example, when the rule has one.
* PREDICT  - rule examples reframed as "... What happens next?" -> the outcome first, then the rule;
  conditional rules as "Suppose X. What happens next?" -> "Y".
* RETROSPECT - rule examples told as a past game ("Last game: <situation> <outcome> Did we play that
  right?") -> "Yes, that was right" and the rule. The rules print only correct plays, so these examples
  teach the review format and the citing, not spotting mistakes; reviews of wrong plays come from feedback
  and admin-supplied files.

Each example's ``group`` is the rule number (or the glossary term), so the train/validation split never
puts two framings of the same rule on both sides within one expert. Question wordings rotate through a
few variants chosen by a hash of the rule number: deterministic, but not one fixed template.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator

from engine.api import Expert
from engine.prompts import ANSWER_OPENING
from knowledge.context import render_passage
from knowledge.models import Rule, RulesDocument
from knowledge.passages import glossary_passages, is_heading_rule, rule_passages
from training.examples import TrainingExample

_SENTENCE_END = re.compile(r"(?<=[.!?”])\s+(?=[A-Z“(])")
_CONDITIONAL = re.compile(r"^If ([^,]{10,200}), (.{10,})$", re.S)
_MAX_ANSWER_CHARS = 600
_TAIL_CITATION = re.compile(r"\s*(\((?:CR|Glossary:)[^()]*\)|This follows from CR [\w.]+\.)$")


def split_sentences(text: str) -> list[str]:
    """Sentences of rules prose, never cutting inside a quoted ability (“{T}: Add {G}. Draw a card.”)."""
    pieces = _SENTENCE_END.split(" ".join(text.split()))
    out: list[str] = []
    for piece in pieces:
        if out and out[-1].count("“") > out[-1].count("”"):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return [p for p in out if p]


def _pick(key: str, options: tuple[str, ...]) -> str:
    return options[int(hashlib.sha1(key.encode()).hexdigest()[:6], 16) % len(options)]


def _cap(text: str) -> str:
    """At most ~600 characters of whole sentences, always keeping the closing citation."""
    text = text.strip()
    if len(text) <= _MAX_ANSWER_CHARS:
        return text
    tail = _TAIL_CITATION.search(text)
    body, cite = (text[: tail.start()], tail.group(1)) if tail else (text, "")
    out = ""
    for sentence in split_sentences(body):
        if out and len(out) + len(sentence) + 1 > _MAX_ANSWER_CHARS - len(cite):
            break
        out = f"{out} {sentence}".strip()
    return f"{out} {cite}".strip()


def _says(number: str, text: str) -> str:
    """How every answer opens, as served (``engine.prompts.ANSWER_OPENING``): the deciding rule by number,
    then its first sentence restated, so the model learns to cite and restate rather than invent."""
    return f"{ANSWER_OPENING.format(number=number)} {_lower_first(_first_sentence(text))}"


def _first_sentence(text: str) -> str:
    sentences = split_sentences(text)
    return sentences[0] if sentences else text.strip()


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lower_first(text: str) -> str:
    # Keep capitalised names ("Humility") and pronoun "I"; only lower a leading article-like word.
    first = text.split(" ", 1)[0]
    return text if first.isupper() or first in ("I",) else text[:1].lower() + text[1:]


class _Source:
    """The release's passages rendered as the serving context renders them."""

    def __init__(self, doc: RulesDocument) -> None:
        self.doc = doc
        self.release = doc.effective_date
        self.rule_context = {p.citation.id: render_passage(p) for p in rule_passages(doc)}
        self.glossary_context = {p.citation.id: render_passage(p) for p in glossary_passages(doc)}

    def rules(self) -> Iterator[Rule]:
        return (r for r in self.doc.rules.values() if r.kind in ("rule", "subrule"))

    def example(
        self, expert: Expert, rule: str, question: str, answer: str, context: str, group: str = ""
    ) -> TrainingExample:
        return TrainingExample(
            experts=(expert.value,),
            question=" ".join(question.split()),
            answer=_cap(answer),
            context=context,
            source=f"rules:{self.release}",
            group=group or f"rule:{rule}",
        )


def _worked_examples(src: _Source) -> Iterator[tuple[Rule, str, str]]:
    """(rule, situation, outcome) from printed examples of two or more sentences."""
    for rule in src.rules():
        for example in rule.examples:
            sentences = split_sentences(example)
            if len(sentences) >= 2:
                yield rule, sentences[0], " ".join(sentences[1:])


def _conditionals(src: _Source) -> Iterator[tuple[Rule, str, str]]:
    """(rule, condition, consequence) from rules whose first sentence is "If X, Y."."""
    for rule in src.rules():
        match = _CONDITIONAL.match(_first_sentence(rule.text))
        if match:
            yield rule, match.group(1).strip(), match.group(2).strip().rstrip(".") + "."


def explain_examples(src: _Source) -> Iterator[TrainingExample]:
    for term, entry in src.doc.glossary.items():
        # Drop the "See rule 702.19, “Trample.”" pointers: the answer cites the rule itself.
        definition = " ".join(s for s in split_sentences(entry.text) if not s.startswith("See "))
        if len(definition) < 12:
            continue  # a bare cross-reference ("See Trample.") teaches nothing
        # Cite the most specific rule the entry points to (a rule over a chapter; never a bare section).
        refs = sorted((r for r in entry.references if len(r) >= 3), key=lambda r: "." not in r)
        cite = f"(CR {refs[0]})" if refs else f"(Glossary: {term})"
        context = src.glossary_context.get(term, "")
        if refs and refs[0] in src.doc.rules:
            rule = src.doc.rules[refs[0]]
            if is_heading_rule(rule) and rule.children:  # "702.19 Trample" alone says nothing: use 702.19a
                rule = src.doc.rules[rule.children[0]]
            if rule.number in src.rule_context:
                context = f"{context}\n\n{src.rule_context[rule.number]}"
        question = _pick(
            term, ("What does {t} mean?", "What is {t}?", "Explain {t}.", "Define {t} in Magic.")
        ).format(t=term)
        answer = f"{term}: {definition} {cite}"
        if refs and refs[0] in src.doc.rules:  # rule-first, as served: the rule the entry points to, then it
            answer = f"{_says(rule.number, rule.text)} {term}: {definition}"
        yield src.example(Expert.EXPLAIN, term, question, answer, context, f"term:{term.lower()}")
    for rule in src.rules():
        if not (rule.number.startswith(("701.", "702.")) and is_heading_rule(rule) and rule.children):
            continue
        subs = [src.doc.rules[c] for c in rule.children[:2]]
        body = " ".join(
            [
                _says(subs[0].number, subs[0].text),
                *(f"{_first_sentence(s.text)} (CR {s.number})" for s in subs[1:]),
            ]
        )
        context = "\n\n".join(src.rule_context[s.number] for s in subs)
        name = rule.text.strip()
        question = _pick(
            rule.number, ("How does {t} work?", "What does {t} do?", "Explain the {t} rule.")
        ).format(t=name.lower())
        yield src.example(Expert.EXPLAIN, rule.number, question, body, context, f"term:{name.lower()}")


def reason_examples(src: _Source) -> Iterator[TrainingExample]:
    for rule, situation, outcome in _worked_examples(src):
        question = (
            situation
            + " "
            + _pick(
                rule.number + situation, ("What happens?", "How does this work out?", "How is this resolved?")
            )
        )
        answer = f"{_says(rule.number, rule.text)} Applying it here: {outcome}"
        yield src.example(Expert.REASON, rule.number, question, answer, src.rule_context[rule.number])
    for rule, condition, consequence in _conditionals(src):
        answer = f"{_says(rule.number, rule.text)} So here, {_lower_first(consequence)}"
        yield src.example(
            Expert.REASON,
            rule.number,
            f"What happens if {_lower_first(condition)}?",
            answer,
            src.rule_context[rule.number],
        )


def teach_examples(src: _Source) -> Iterator[TrainingExample]:
    for rule in src.rules():
        if not (is_heading_rule(rule) and rule.children and not rule.text.endswith(":")):
            continue
        subs = [src.doc.rules[c] for c in rule.children]
        first = subs[0]
        example = next((e for s in [rule, *subs] for e in s.examples), None)
        answer = _says(first.number, first.text)
        context = src.rule_context[first.number]
        if example:
            holder = next(s for s in [rule, *subs] if example in s.examples)
            answer += f" For example: {_first_sentence(example)}"
            if holder is not first:
                context += "\n\n" + src.rule_context[holder.number]
        name = rule.text.strip()
        question = _pick(
            rule.number,
            (
                "I'm new to Magic. Can you teach me about {t}?",
                "Teach me {t} simply, please.",
                "I'm learning the game: what should I know about {t}?",
            ),
        ).format(t=name.lower())
        yield src.example(Expert.TEACH, rule.number, question, answer, context)
    for rule, situation, outcome in _worked_examples(src):
        question = f"I'm still learning. Can you walk me through CR {rule.number} with an example?"
        answer = f"{_says(rule.number, rule.text)} For example: {situation} {_first_sentence(outcome)}"
        yield src.example(
            Expert.TEACH,
            rule.number,
            question,
            answer,
            src.rule_context[rule.number],
            f"rule:{rule.number}:walk",
        )


def predict_examples(src: _Source) -> Iterator[TrainingExample]:
    for rule, situation, outcome in _worked_examples(src):
        question = f"{situation} " + _pick(
            situation, ("What happens next?", "What will happen?", "What's the outcome?")
        )
        yield src.example(
            Expert.PREDICT,
            rule.number,
            question,
            f"{_says(rule.number, rule.text)} So here: {outcome}",
            src.rule_context[rule.number],
        )
    for rule, condition, consequence in _conditionals(src):
        question = f"Suppose {_lower_first(condition)}. What happens next?"
        yield src.example(
            Expert.PREDICT,
            rule.number,
            question,
            f"{_says(rule.number, rule.text)} So {_lower_first(consequence)}",
            src.rule_context[rule.number],
        )


def retrospect_examples(src: _Source) -> Iterator[TrainingExample]:
    for rule, situation, outcome in _worked_examples(src):
        question = f"In my last game: {situation} {outcome} Did we play that right?"
        answer = f"{_says(rule.number, rule.text)} So yes, that was right."
        yield src.example(Expert.RETROSPECT, rule.number, question, answer, src.rule_context[rule.number])
    for rule, condition, consequence in _conditionals(src):
        question = f"Last game, {_lower_first(condition)}, and we ruled: {_lower_first(consequence)} Was that correct?"
        answer = f"{_says(rule.number, rule.text)} So yes, that ruling was correct."
        yield src.example(Expert.RETROSPECT, rule.number, question, answer, src.rule_context[rule.number])


_BUILDERS: dict[Expert, Callable[[_Source], Iterator[TrainingExample]]] = {
    Expert.EXPLAIN: explain_examples,
    Expert.REASON: reason_examples,
    Expert.TEACH: teach_examples,
    Expert.PREDICT: predict_examples,
    Expert.RETROSPECT: retrospect_examples,
}


def rules_examples(doc: RulesDocument, expert: Expert | str) -> list[TrainingExample]:
    """All rules-derived examples of one expert, in document order, without duplicate questions."""
    seen: set[tuple[str, str]] = set()
    out = []
    for example in _BUILDERS[Expert(expert)](_Source(doc)):
        key = (example.question, example.answer)
        if key not in seen:
            seen.add(key)
            out.append(example)
    return out


def mixed_rules_examples(doc: RulesDocument, limit: int | None = None) -> list[TrainingExample]:
    """Examples that need two experts at once, for training the cross-expert fusion.

    "What does X mean, and can you teach me with an example?" (EXPLAIN + TEACH) from keyword rules that print
    an example, and "What happens next, and which rule decides it?" (PREDICT + REASON) from worked examples.
    """
    src = _Source(doc)
    out: list[TrainingExample] = []
    for rule in src.rules():
        if not (rule.number.startswith("702.") and is_heading_rule(rule) and rule.children):
            continue
        subs = [src.doc.rules[c] for c in rule.children]
        holder = next((s for s in subs if s.examples), None)
        if holder is None:
            continue
        name = rule.text.strip().lower()
        answer = f"{_first_sentence(subs[0].text)} (CR {subs[0].number}) For example: {_first_sentence(holder.examples[0])}"
        context = src.rule_context[subs[0].number]
        if holder is not subs[0]:
            context += "\n\n" + src.rule_context[holder.number]
        out.append(
            TrainingExample(
                experts=(Expert.EXPLAIN.value, Expert.TEACH.value),
                question=f"What does {name} mean, and can you teach me with an example?",
                answer=_cap(answer),
                context=context,
                source=f"rules:{src.release}",
                group=f"rule:{rule.number}:mixed",
            )
        )
    for rule, situation, outcome in _worked_examples(src):
        out.append(
            TrainingExample(
                experts=(Expert.PREDICT.value, Expert.REASON.value),
                question=f"{situation} What happens next, and which rule decides it?",
                answer=_cap(f"{outcome} CR {rule.number} decides it: {_first_sentence(rule.text)}"),
                context=src.rule_context[rule.number],
                source=f"rules:{src.release}",
                group=f"rule:{rule.number}:mixed",
            )
        )
    return out[:limit] if limit else out
