"""A knowledge graph over one rules release and a set of cards (networkx ``MultiDiGraph``).

Nodes (attribute ``kind``), ids prefixed by kind:

* ``rule:702.19b`` every section, chapter, rule and sub-rule (``rule_kind``, ``digest`` of its text);
* ``term:trample`` every glossary entry (``term`` as printed, ``digest``), keyed by :func:`normalize_term`;
* ``keyword:trample`` every keyword ability (702.x) and keyword action (701.x), from the heading rules
  ("702.19. Trample"); ``keyword_kind`` is "ability" or "action";
* ``mechanic:landfall`` ability words listed in 207.2c (``mechanic_kind`` "ability word", no rules of their
  own, so they point at 207.2c), and the named concepts of section 7 from chapter 708 on ("Split Cards",
  "Double-Faced Cards", "The Monarch", "Day and Night", ...) plus the casual variants of section 9
  ("Commander", "Planechase", ...), pointing at their chapter. 731 and 732 (shortcuts, illegal actions) are
  tournament procedure rather than something a card does, so they are left out;
* ``card:<lowercased name>`` each added card (``name``, ``layout``, ``faces``, and ``text``: its oracle text
  as matched, kept so a rules update can relink cards without the card data at hand).

Edges (attribute ``rel``, also the multigraph key): ``references`` (rule -> rule it cites), ``has_subrule``
(parent -> child), ``defined_by`` (keyword / term / mechanic -> rule), ``has_keyword`` (card -> keyword
ability or action listed in its Scryfall keywords, or a keyword ability named in its text),
``mentions_term`` (card -> keyword action or glossary term in its text), ``has_mechanic`` (card ->
ability word heading one of its abilities, or the card-kind chapter its layout belongs to).

Oracle text is matched on word boundaries, longest name first, without reminder text and without the card's
own name; glossary terms that are everyday game words ("creature", "target", "you") are not linked. The
vocabulary and the matching rules live in :mod:`knowledge.vocabulary`; this module owns nodes and edges.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import networkx as nx
from rapidfuzz import process

from knowledge.errors import KnowledgeError, UnknownCard, UnknownRule
from knowledge.models import Card, RulesDocument
from knowledge.rules import normalize_number, normalize_term, rule_sort_key
from knowledge.rules_diff import diff_signatures, signatures
from knowledge.vocabulary import (
    LAYOUT_MECHANICS,
    ability_word_heads,
    build_phrases,
    card_text,
    keyword_node,
    name_key,
    phrase_node,
    phrase_pattern,
    vocabulary,
)

__all__ = ["KnowledgeGraph", "NoPath", "UnknownEntity", "REL"]


class UnknownEntity(KnowledgeError):
    def __init__(self, entity: str, suggestions: list[str]) -> None:
        self.entity = entity
        self.suggestions = suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"Nothing called {entity!r} in the rules knowledge graph.{hint}")


class NoPath(KnowledgeError):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"No connection between {a!r} and {b!r} in the rules knowledge graph.")


class REL:
    REFERENCES = "references"
    HAS_SUBRULE = "has_subrule"
    DEFINED_BY = "defined_by"
    HAS_KEYWORD = "has_keyword"
    MENTIONS_TERM = "mentions_term"
    HAS_MECHANIC = "has_mechanic"


_RULE_RELS = (REL.REFERENCES, REL.HAS_SUBRULE)
_CARD_RELS = (REL.HAS_KEYWORD, REL.MENTIONS_TERM, REL.HAS_MECHANIC)


def _rule_id(number: str) -> str:
    return f"rule:{number}"


class KnowledgeGraph:
    """Rules, glossary, keywords, mechanics and cards, and the links between them."""

    def __init__(self, graph: nx.MultiDiGraph | None = None) -> None:
        self.g: nx.MultiDiGraph = graph if graph is not None else nx.MultiDiGraph(release=None)
        self._reindex()

    @property
    def release(self) -> str | None:
        return self.g.graph.get("release")

    # ------------------------------------------------------------------------------------ building

    @classmethod
    def build(cls, doc: RulesDocument, cards: Iterable[Card] = ()) -> KnowledgeGraph:
        graph = cls()
        graph.g.graph["release"] = doc.effective_date
        rule_sigs, term_sigs = signatures(doc)
        for number, rule in doc.rules.items():
            graph.g.add_node(_rule_id(number), kind="rule", rule_kind=rule.kind, digest=rule_sigs[number])
        for number in doc.rules:
            graph._link_rule(doc, number)
        for term in doc.glossary:
            graph._put_term(doc, term, term_sigs[term])
        for node, attrs in vocabulary(doc).items():
            graph._put_vocab(node, attrs)
        graph._reindex()
        graph.add_cards(cards)
        return graph

    def _add_edge(self, source: str, target: str, rel: str) -> None:
        self.g.add_edge(source, target, key=rel, rel=rel)

    def _clear_out_edges(self, node: str, rels: Iterable[str]) -> None:
        wanted = set(rels)
        doomed = [(u, v, k) for u, v, k in self.g.out_edges(node, keys=True) if k in wanted]
        self.g.remove_edges_from(doomed)

    def _link_rule(self, doc: RulesDocument, number: str) -> None:
        node = _rule_id(number)
        self._clear_out_edges(node, _RULE_RELS)
        rule = doc.rules[number]
        for child in rule.children:
            self._add_edge(node, _rule_id(child), REL.HAS_SUBRULE)
        for ref in rule.references:
            self._add_edge(node, _rule_id(ref), REL.REFERENCES)

    def _put_term(self, doc: RulesDocument, term: str, digest: str) -> str:
        node = f"term:{normalize_term(term)}"
        self.g.add_node(node, kind="term", term=term, digest=digest)
        self._clear_out_edges(node, [REL.DEFINED_BY])
        for ref in doc.glossary[term].references:
            self._add_edge(node, _rule_id(ref), REL.DEFINED_BY)
        return node

    def _put_vocab(self, node: str, attrs: dict[str, Any]) -> None:
        self.g.add_node(node, **attrs)
        self._clear_out_edges(node, [REL.DEFINED_BY])
        if self.g.has_node(_rule_id(attrs["rule"])):
            self._add_edge(node, _rule_id(attrs["rule"]), REL.DEFINED_BY)

    def _reindex(self) -> None:
        """Name lookups and the oracle-text matcher, rebuilt whenever keywords, terms or mechanics change."""
        self._names: dict[str, str] = {}
        for node, attrs in self.g.nodes(data=True):
            if attrs.get("kind") in ("keyword", "mechanic", "term"):
                self._names.setdefault(name_key(attrs.get("name") or attrs.get("term")), node)
        self._phrases = build_phrases(self.g.nodes(data=True), self.g.has_node)
        self._matcher = phrase_pattern(self._phrases)
        self._ability_words = {
            name_key(a["name"]): n
            for n, a in self.g.nodes(data=True)
            if a.get("mechanic_kind") == "ability word"
        }
        self._cards = {name_key(a["name"]): n for n, a in self.g.nodes(data=True) if a.get("kind") == "card"}
        for node, attrs in self.g.nodes(data=True):
            if attrs.get("kind") == "card":
                for face in attrs.get("faces", []):
                    self._cards.setdefault(name_key(face), node)

    # ------------------------------------------------------------------------------------- cards

    def add_cards(self, cards: Iterable[Card]) -> int:
        """Add (or refresh) cards and link them to keywords, terms and mechanics. Returns how many."""
        count = 0
        for card in cards:
            node = f"card:{name_key(card.name)}"
            self.g.add_node(
                node,
                kind="card",
                name=card.name,
                layout=card.layout,
                faces=[face.name for face in card.faces],
                keywords=list(card.keywords),
                text=card_text(card),
            )
            self._link_card(node)
            count += 1
        self._reindex()
        return count

    def _link_card(self, node: str) -> None:
        self._clear_out_edges(node, _CARD_RELS)
        attrs = self.g.nodes[node]
        for keyword in attrs["keywords"]:
            target = self._keyword_node(keyword) or self._ability_words.get(name_key(keyword))
            if target is not None:
                rel = REL.HAS_MECHANIC if target.startswith("mechanic:") else REL.HAS_KEYWORD
                self._add_edge(node, target, rel)
        mechanic = LAYOUT_MECHANICS.get(attrs["layout"])
        if mechanic and self.g.has_node(f"mechanic:{mechanic}"):
            self._add_edge(node, f"mechanic:{mechanic}", REL.HAS_MECHANIC)
        text = attrs["text"]
        for target in self._ability_word_heads(text):  # "landfall — whenever a land you control enters, ..."
            self._add_edge(node, target, REL.HAS_MECHANIC)
        for match in self._matcher.finditer(text) if self._matcher else ():
            target = self._phrase_node(match.group(0))
            if target is None or self.g.has_edge(node, target):
                continue
            target_attrs = self.g.nodes[target]
            if target_attrs["kind"] == "keyword" and target_attrs["keyword_kind"] == "ability":
                self._add_edge(node, target, REL.HAS_KEYWORD)
            elif target_attrs["kind"] == "mechanic":
                self._add_edge(node, target, REL.HAS_MECHANIC)
            else:
                self._add_edge(node, target, REL.MENTIONS_TERM)

    def _phrase_node(self, phrase: str) -> str | None:
        return phrase_node(self._phrases, phrase)

    def _keyword_node(self, name: str) -> str | None:
        return keyword_node(name, self._phrases, self.g.has_node)

    # ------------------------------------------------------------------------------ rules update

    def update_rules(self, new_doc: RulesDocument) -> dict[str, Any]:
        """Move the graph to ``new_doc``, touching only what the release diff names. Returns what changed."""
        old_rules = {n[5:]: a["digest"] for n, a in self.g.nodes(data=True) if a["kind"] == "rule"}
        old_terms = {a["term"]: a["digest"] for n, a in self.g.nodes(data=True) if a["kind"] == "term"}
        new_rules, new_terms = signatures(new_doc)
        diff = diff_signatures(
            self.release or "", old_rules, old_terms, new_doc.effective_date, new_rules, new_terms
        )
        touched: set[str] = set()
        before_edges = self.g.number_of_edges()

        self.g.remove_nodes_from(_rule_id(n) for n in diff.removed)
        for number in [*diff.added, *diff.changed]:
            rule = new_doc.rules[number]
            self.g.add_node(_rule_id(number), kind="rule", rule_kind=rule.kind, digest=new_rules[number])
        for number in [*diff.added, *diff.changed]:
            self._link_rule(new_doc, number)
        added = set(diff.added)
        for number in diff.added:  # the new rule under an unchanged parent
            parent = new_doc.rules[number].parent
            if parent is not None:
                self._add_edge(_rule_id(parent), _rule_id(number), REL.HAS_SUBRULE)
        for number, rule in new_doc.rules.items():  # unchanged text that cites a number which now exists
            for ref in added.intersection(rule.references):
                self._add_edge(_rule_id(number), _rule_id(ref), REL.REFERENCES)
        touched.update(_rule_id(n) for n in diff.touched)

        self.g.remove_nodes_from(f"term:{normalize_term(t)}" for t in diff.glossary_removed)
        for term in [*diff.glossary_added, *diff.glossary_changed]:
            touched.add(self._put_term(new_doc, term, new_terms[term]))
        for term, entry in new_doc.glossary.items():
            for ref in added.intersection(entry.references):
                self._add_edge(f"term:{normalize_term(term)}", _rule_id(ref), REL.DEFINED_BY)
        touched.update(f"term:{normalize_term(t)}" for t in diff.glossary_removed)

        vocab = vocabulary(new_doc)
        old_vocab = {n: dict(a) for n, a in self.g.nodes(data=True) if a["kind"] in ("keyword", "mechanic")}
        vocab_removed = sorted(set(old_vocab) - set(vocab))
        self.g.remove_nodes_from(vocab_removed)
        vocab_added, vocab_changed = [], []
        for node, attrs in vocab.items():
            if node not in old_vocab:
                vocab_added.append(node)
            elif old_vocab[node] != attrs or self._definition(node) != {_rule_id(attrs["rule"])}:
                vocab_changed.append(node)  # renamed, or its defining rule moved or was just removed
            else:
                continue
            self._put_vocab(node, attrs)
        touched.update([*vocab_removed, *vocab_added, *vocab_changed])

        old_phrases = set(self._phrases.items())
        self._reindex()
        self.g.graph["release"] = new_doc.effective_date
        changed_phrases = {p for p, _ in old_phrases ^ set(self._phrases.items())}
        relinked = self._relink_cards(changed_phrases, touched)
        return {
            "old_release": diff.old_release,
            "new_release": diff.new_release,
            "rules_added": diff.added,
            "rules_removed": diff.removed,
            "rules_changed": diff.changed,
            "terms_added": diff.glossary_added,
            "terms_removed": diff.glossary_removed,
            "terms_changed": diff.glossary_changed,
            "vocabulary_added": vocab_added,
            "vocabulary_removed": vocab_removed,
            "vocabulary_changed": vocab_changed,
            "cards_relinked": relinked,
            "touched": sorted(touched),
            "edges_before": before_edges,
            "edges_after": self.g.number_of_edges(),
        }

    def _definition(self, node: str) -> set[str]:
        return {v for _, v, k in self.g.out_edges(node, keys=True) if k == REL.DEFINED_BY}

    def _relink_cards(self, phrases: set[str], touched: set[str]) -> list[str]:
        """Relink the cards a vocabulary change can affect: those whose text holds a phrase that now means
        something else (or nothing), whose listed keywords or layout name a touched node, or that linked to a
        node the update touched. The result equals linking them afresh."""
        pattern = phrase_pattern(phrases)
        relinked = []
        for node, attrs in list(self.g.nodes(data=True)):
            if attrs["kind"] != "card":
                continue
            layout = LAYOUT_MECHANICS.get(attrs["layout"])
            if not (
                any(v in touched for _, v in self.g.out_edges(node))
                or (pattern is not None and pattern.search(attrs["text"]))
                or any(self._keyword_node(k) in touched for k in attrs["keywords"])
                or any(self._ability_words.get(name_key(k)) in touched for k in attrs["keywords"])
                or (layout is not None and f"mechanic:{layout}" in touched)
                or any(n in touched for n in self._ability_word_heads(attrs["text"]))
            ):
                continue
            before = set(self.g.out_edges(node, keys=True))
            self._link_card(node)
            if set(self.g.out_edges(node, keys=True)) != before:
                relinked.append(node)
        return relinked

    def _ability_word_heads(self, text: str) -> list[str]:
        return ability_word_heads(text, self._ability_words)

    # ------------------------------------------------------------------------------------- queries

    def node(self, node_id: str) -> dict[str, Any]:
        return dict(self.g.nodes[node_id])

    def resolve(self, entity: str) -> str:
        """Node id for "702.19b" / "CR 702.19b", a keyword, mechanic or glossary term, a card name, or a node id."""
        text = entity.strip()
        if text in self.g:
            return text
        number = normalize_number(text)
        if re.fullmatch(r"\d+(?:\.\d+[a-z]*)?", number):
            if _rule_id(number) in self.g:
                return _rule_id(number)
            raise UnknownRule(number, self._nearest_rules(number))
        key = name_key(text)
        for candidate in (
            f"keyword:{key}",
            f"mechanic:{key}",
            self._keyword_node(text),
            f"term:{normalize_term(text)}",
        ):
            if candidate in self.g:
                return candidate
        node = self._names.get(key) or self._cards.get(key)
        if node is not None:
            return node
        choices = {**self._names, **self._cards}
        suggestions = [self._label(choices[m]) for m, _, _ in process.extract(key, list(choices), limit=3)]
        raise UnknownEntity(entity, suggestions)

    def _label(self, node: str) -> str:
        attrs = self.g.nodes[node]
        return attrs.get("name") or attrs.get("term") or node.split(":", 1)[1]

    def _nearest_rules(self, number: str, count: int = 5) -> list[str]:
        numbers = sorted(
            (n[5:] for n, a in self.g.nodes(data=True) if a["kind"] == "rule"), key=rule_sort_key
        )
        key = rule_sort_key(number)
        pos = next((i for i, n in enumerate(numbers) if rule_sort_key(n) > key), len(numbers))
        lo = max(0, min(pos - count // 2, len(numbers) - count))
        return numbers[lo : lo + count]

    def neighbours(self, entity: str, depth: int = 1, rel: str | Iterable[str] | None = None) -> list[str]:
        """Node ids within ``depth`` links of ``entity`` (either direction), nearest first, optionally only
        along edges whose ``rel`` is ``rel`` (one name or several)."""
        start = self.resolve(entity)
        rels = None if rel is None else ({rel} if isinstance(rel, str) else set(rel))
        seen, out = {start}, []
        frontier = [start]
        for _ in range(depth):
            level: set[str] = set()
            for node in frontier:
                edges = [*self.g.out_edges(node, keys=True), *self.g.in_edges(node, keys=True)]
                for u, v, key in edges:
                    other = v if u == node else u
                    if (rels is None or key in rels) and other not in seen:
                        level.add(other)
            seen |= level
            frontier = sorted(level)
            out.extend(frontier)
        return out

    def rules_for_keyword(self, name: str) -> list[str]:
        """The defining rule of a keyword (ability or action) or mechanic and all its sub-rules, in order."""
        node = self.resolve(name)
        if self.g.nodes[node]["kind"] not in ("keyword", "mechanic", "term"):
            raise UnknownEntity(name, [])
        out: list[str] = []
        for _, rule, key in self.g.out_edges(node, keys=True):
            if key == REL.DEFINED_BY:
                out.extend(self._rule_and_descendants(rule))
        return _unique_sorted(out)

    def _rule_and_descendants(self, rule_node: str) -> list[str]:
        out, queue = [], deque([rule_node])
        while queue:
            node = queue.popleft()
            out.append(node[5:])
            queue.extend(v for _, v, k in self.g.out_edges(node, keys=True) if k == REL.HAS_SUBRULE)
        return out

    def rules_for_card(self, card_name: str) -> list[str]:
        """Rules governing the card's keywords, keyword actions and mechanics, in rules order."""
        key = name_key(card_name)
        node = self._cards.get(key) or (card_name if card_name in self.g else None)
        if node is None or self.g.nodes[node].get("kind") != "card":
            matches = process.extract(key, list(self._cards), limit=3)
            raise UnknownCard(card_name, [self._label(self._cards[m]) for m, _, _ in matches])
        out: list[str] = []
        for _, target, rel in self.g.out_edges(node, keys=True):
            if rel in (REL.HAS_KEYWORD, REL.HAS_MECHANIC) or target.startswith("keyword:"):
                for _, rule, key2 in self.g.out_edges(target, keys=True):
                    if key2 == REL.DEFINED_BY:
                        out.extend(self._rule_and_descendants(rule))
        return _unique_sorted(out)

    def path(self, a: str, b: str) -> list[str]:
        """Node ids on a shortest path between two entities, following links either way."""
        source, target = self.resolve(a), self.resolve(b)
        try:
            return nx.shortest_path(self.g.to_undirected(as_view=True), source, target)
        except nx.NetworkXNoPath as exc:
            raise NoPath(a, b) from exc

    def keyword_names(self, kind: str | None = None) -> list[str]:
        """Keyword names as printed ("Trample", "Scry"), alphabetical; ``kind`` "ability" or "action"."""
        return sorted(
            (a["name"] for _, a in self.g.nodes(data=True) if a["kind"] == "keyword")
            if kind is None
            else (a["name"] for _, a in self.g.nodes(data=True) if a.get("keyword_kind") == kind),
            key=str.lower,
        )

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = {"nodes": self.g.number_of_nodes(), "edges": self.g.number_of_edges()}
        for _, attrs in self.g.nodes(data=True):
            counts[f"nodes:{attrs['kind']}"] = counts.get(f"nodes:{attrs['kind']}", 0) + 1
        for _, _, key in self.g.edges(keys=True):
            counts[f"edges:{key}"] = counts.get(f"edges:{key}", 0) + 1
        return counts

    # ------------------------------------------------------------------------------- persistence

    def save(self, path: str | Path) -> None:
        """Gzip'd node-link JSON, with the rules release and a format version (:mod:`knowledge.graph_store`)."""
        from knowledge.graph_store import write_graph

        write_graph(self.g, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> KnowledgeGraph:
        """The graph saved at ``path``; DataMissing when there is none, StaleIndex when it is old or damaged."""
        from knowledge.graph_store import read_graph

        return cls(read_graph(Path(path)))


def _unique_sorted(numbers: Iterable[str]) -> list[str]:
    return sorted(set(numbers), key=rule_sort_key)
