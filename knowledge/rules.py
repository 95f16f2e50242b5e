"""The Comprehensive Rules: parse the official text release, and look rules up by number.

The official ``.txt`` release is UTF-8 with a BOM; its line endings are CRLF in some releases and bare CR
in others, so :func:`load_rules` decodes bytes and normalises both before parsing. Layout of a release:

* a header (title, "These rules are effective as of <Month D, YYYY>.", introduction);
* "Contents": the section and chapter titles, then "Glossary" and "Credits" (skipped: they repeat the body);
* the body: sections ("1. Game Concepts"), chapters ("100. General"), rules ("100.1. ..."),
  sub-rules ("100.1a ..."), "Example: ..." lines after the rule they illustrate, and rare indented
  continuation lines that belong to the rule above (e.g. 205.4c);
* "Glossary": a term line, its definition lines, a blank line; then "Credits".

The printed numbering is not perfectly regular (``606.5`` lacks its dot, ``119.1d.`` has one, ``901.4.All``
lacks the space), so the patterns accept all three. Numbers are stored without a trailing dot.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from knowledge.errors import DataMissing, RulesParseError, UnknownRule
from knowledge.models import GlossaryEntry, Rule, RulesDocument

__all__ = [
    "RuleBook",
    "format_rule",
    "list_releases",
    "load_release",
    "load_rules",
    "normalize_number",
    "normalize_term",
    "parse_rules",
    "rule_sort_key",
]

_SECTION = re.compile(r"^(\d)\.\s+(\S.*)$")
_CHAPTER = re.compile(r"^(\d{3})\.\s+(\S.*)$")
_SUBRULE = re.compile(r"^(\d{3}\.\d+[a-z]+)\.?\s+(\S.*)$")
_RULE = re.compile(r"^(\d{3}\.\d+)(?:\.\s*|\s+)(\S.*)$")
_EXAMPLE = re.compile(r"^Examples?:\s*(.*)$")
_EFFECTIVE = re.compile(r"effective as of\s+([A-Z][a-z]+)\s+(\d{1,2}),\s*(\d{4})")
_RELEASE_STEM = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# Cross-references: "rule 613.7", "rules 702.19b and 702.19c", "rules 601.2b and 601.2f–h", "section 8",
# "rules 712.9–10", "rules 903.6–903.11", and bare dotted numbers ("See 702.153", "in 601.2a–h").
# Chapter and section numbers ("rule 510", "section 8") count only after the trigger word, since a bare
# "100" or "8" is usually a quantity; a dotted number is always a rule. The trigger is case-insensitive.
_NUM = r"\d{3}(?:\.\d+[a-z]*)?|\d(?![\d.])"
_RANGE_END = r"(?:\s*[–-]\s*(?:\d{3}\.\d+[a-z]*|\d+|[a-z]+)\b)?"
_ITEM = rf"(?:{_NUM}){_RANGE_END}"
_SEP = r"(?:\s*,\s*(?:and\s+|or\s+)?|\s+(?:and|or)\s+)"
_REFERENCE = re.compile(
    rf"(?i:\b(?:rules?|sections?))\s+({_ITEM}(?:{_SEP}{_ITEM})*)"  # a listing after "rule(s)"/"section(s)"
    rf"|(?<![\d.])(\d{{3}}\.\d+[a-z]*{_RANGE_END})"  # or one bare dotted number
)
_REF_ITEM = re.compile(rf"({_NUM})(?:\s*[–-]\s*(\d{{3}}\.\d+[a-z]*|\d+|[a-z]+)\b)?")


# --------------------------------------------------------------------------------------------- parsing


def _lines(text: str) -> list[str]:
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return [line.rstrip() for line in text.split("\n")]


def _effective_date(lines: list[str]) -> str:
    for line in lines[:40]:
        match = _EFFECTIVE.search(line)
        if match:
            month, day, year = match.groups()
            try:
                return datetime.strptime(f"{month} {day} {year}", "%B %d %Y").date().isoformat()
            except ValueError as exc:
                raise RulesParseError(f"Unreadable effective date in rules header: {line!r}") from exc
    raise RulesParseError(
        "Not a Comprehensive Rules text file: no 'These rules are effective as of ...' line in the header."
    )


def _body_bounds(lines: list[str]) -> tuple[int, int, int]:
    """(first body line, glossary heading, credits heading) line indexes."""
    start = 0
    if "Contents" in lines:
        contents = lines.index("Contents")
        try:
            start = lines.index("Credits", contents) + 1  # the table of contents ends with "Credits"
        except ValueError as exc:
            raise RulesParseError("Rules table of contents does not end with 'Credits'.") from exc
    glossary = max((i for i, line in enumerate(lines) if line == "Glossary"), default=-1)
    credits = max((i for i, line in enumerate(lines) if line == "Credits"), default=-1)
    if glossary < start or credits < glossary:
        raise RulesParseError(
            "Not a Comprehensive Rules text file: no 'Glossary' and 'Credits' after the rules."
        )
    return start, glossary, credits


def _parent_of(number: str, kind: str) -> str | None:
    if kind == "section":
        return None
    if kind == "chapter":
        return number[0]
    if kind == "rule":
        return number.split(".")[0]
    return number.rstrip("abcdefghijklmnopqrstuvwxyz")


def _parse_body(lines: list[str]) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    current: Rule | None = None
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        for kind, pattern in (
            ("subrule", _SUBRULE),
            ("rule", _RULE),
            ("chapter", _CHAPTER),
            ("section", _SECTION),
        ):
            match = pattern.match(line)
            if match:
                number, text = match.groups()
                if number in rules:
                    raise RulesParseError(f"Rule {number} appears twice in the rules text.")
                current = Rule(number=number, text=text, kind=kind, parent=_parent_of(number, kind))  # type: ignore[arg-type]
                rules[number] = current
                break
        else:
            if current is None:
                raise RulesParseError(f"Text before the first rule: {line[:80]!r}")
            example = _EXAMPLE.match(line)
            if example:
                current.examples.append(example.group(1))
            elif current.examples:  # an indented line after an example continues the example
                current.examples[-1] += "\n" + line
            else:  # an indented continuation paragraph of the rule (e.g. 205.4c)
                current.text += "\n" + line
    for rule in rules.values():
        if rule.parent is not None and rule.parent not in rules:
            rule.parent = None
        if rule.parent is not None:
            rules[rule.parent].children.append(rule.number)
    return rules


def _parse_glossary(lines: list[str]) -> dict[str, GlossaryEntry]:
    glossary: dict[str, GlossaryEntry] = {}
    block: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            block.append(line.strip())
            continue
        if block:
            term, *definition = block
            glossary[term] = GlossaryEntry(term=term, text="\n".join(definition))
            block = []
    return glossary


def _expand_range(start: str, end: str | None, rules: dict[str, Rule]) -> list[str]:
    if end is None:
        return [start]
    if end.isalpha():  # 601.2f–h
        last = start.rstrip("abcdefghijklmnopqrstuvwxyz") + end
    elif "." not in end and "." in start:  # 712.9–10
        last = start.split(".")[0] + "." + end
    else:  # 903.6–903.11
        last = end
    first_rule, last_rule = rules.get(start), rules.get(last)
    if first_rule is None or last_rule is None or first_rule.parent != last_rule.parent:
        return [start, last]
    siblings = rules[first_rule.parent].children if first_rule.parent else [start, last]
    try:
        i, j = siblings.index(start), siblings.index(last)
    except ValueError:
        return [start, last]
    return siblings[i : j + 1] if i <= j else [start, last]


def find_references(text: str, rules: dict[str, Rule], exclude: str | None = None) -> list[str]:
    """Rule and section numbers ``text`` cites that exist in ``rules``, in order, without duplicates."""
    found: dict[str, None] = {}
    for match in _REFERENCE.finditer(text):
        for item in _REF_ITEM.finditer(match.group(1) or match.group(2)):
            for number in _expand_range(item.group(1), item.group(2), rules):
                if number in rules and number != exclude:
                    found.setdefault(number)
    return list(found)


def parse_rules(text: str, source: str | None = None) -> RulesDocument:
    """Parse the text of a Comprehensive Rules release (BOM and CR/CRLF line endings accepted)."""
    lines = _lines(text)
    effective = _effective_date(lines)
    start, glossary_at, credits_at = _body_bounds(lines)
    rules = _parse_body(lines[start:glossary_at])
    if not any(rule.kind == "subrule" for rule in rules.values()):
        raise RulesParseError("Not a Comprehensive Rules text file: no numbered rules found.")
    glossary = _parse_glossary(lines[glossary_at + 1 : credits_at])
    for rule in rules.values():
        rule.references = find_references(rule.full_text(), rules, exclude=rule.number)
    for entry in glossary.values():
        entry.references = find_references(entry.text, rules)
    return RulesDocument(effective_date=effective, rules=rules, glossary=glossary, source=source)


def load_rules(path: str | Path) -> RulesDocument:
    """Read and parse one rules file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataMissing(
            f"Rules file {path} not found. Run `hexcore data update` to fetch the rules."
        ) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RulesParseError(f"{path} is not UTF-8 text, so not a Comprehensive Rules release.") from exc
    try:
        return parse_rules(text, source=str(path))
    except RulesParseError as exc:
        raise RulesParseError(f"{path}: {exc}") from exc


def list_releases(rules_dir: str | Path) -> list[str]:
    """Release names (file stems such as "2026-01-16") of the rules files in ``rules_dir``, oldest first."""
    rules_dir = Path(rules_dir)
    if not rules_dir.is_dir():
        return []
    return sorted(p.stem for p in rules_dir.glob("*.txt") if _RELEASE_STEM.match(p.stem))


def load_release(rules_dir: str | Path, release: str | None = None) -> RulesDocument:
    """Parse one release from ``rules_dir``: ``release`` (a file stem) or, by default, the newest."""
    releases = list_releases(rules_dir)
    if not releases:
        raise DataMissing(f"No rules releases in {rules_dir}. Run `hexcore data update` to fetch the rules.")
    if release is None:
        release = releases[-1]
    if release not in releases:
        raise DataMissing(
            f"Rules release {release} is not in {rules_dir} (have {', '.join(releases)}). "
            "Run `hexcore data update` or pick one of those."
        )
    return load_rules(Path(rules_dir) / f"{release}.txt")


# ---------------------------------------------------------------------------------------------- lookup

_NUMBER_INPUT = re.compile(r"^(?:cr|rule|rules|section)?\s*(\d+(?:\.\d+)?[a-z]*)\.?$")


def normalize_number(number: str) -> str:
    """Canonical rule number: " CR 702.19B. " -> "702.19b". Other input comes back trimmed and lowercased."""
    cleaned = " ".join(number.strip().lower().split())
    match = _NUMBER_INPUT.match(cleaned)
    return match.group(1) if match else cleaned


def normalize_term(term: str) -> str:
    """Case- and punctuation-insensitive form of a glossary term ("Double-Faced Card" -> "double faced card")."""
    return " ".join(re.sub(r"[^\w]+", " ", term.lower()).split())


def rule_sort_key(number: str) -> tuple[int, int, int, int, str]:
    """Numeric order of rule numbers: 1 < 100 < 100.1 < 100.1a < 100.1z < 100.1aa < 100.2 < 100.10 < 101 < 2 < 200.

    A section sorts just before its first chapter; unparseable input sorts last."""
    match = re.match(r"^(\d+)(?:\.(\d+))?([a-z]*)$", number)
    if not match:
        return (10**6, 0, 0, 0, number)
    head, rule, letters = match.groups()
    if len(head) == 1:
        return (int(head) * 100, -2, 0, 0, "")
    return (_bounded_int(head), _bounded_int(rule) if rule is not None else -1, len(letters), 0, letters)


def _bounded_int(digits: str) -> int:
    """int(digits), except that no real rule number is this long: a 5,000-digit "rule" typed by a user sorts
    last instead of hitting Python's int-conversion limit (4,300 digits) with a ValueError."""
    return int(digits) if len(digits) <= 18 else 10**18


class RuleBook:
    """Lookups over one parsed release: by number (forgiving input), glossary, autocomplete."""

    def __init__(self, doc: RulesDocument) -> None:
        self.doc = doc
        self._terms = {normalize_term(term): entry for term, entry in doc.glossary.items()}
        for term, entry in doc.glossary.items():  # "Banding, “Bands with Other”" also answers "banding"
            for part in term.split(","):
                self._terms.setdefault(normalize_term(part), entry)
        self._sorted = sorted(doc.rules, key=rule_sort_key)
        self._keys = [rule_sort_key(n) for n in self._sorted]

    @property
    def release(self) -> str:
        return self.doc.effective_date

    def __contains__(self, number: str) -> bool:
        return normalize_number(number) in self.doc.rules

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.doc.rules.values())

    def __len__(self) -> int:
        return len(self.doc.rules)

    def get(self, number: str) -> Rule:
        """The rule; accepts "702.19b", "702.19b.", "CR 702.19b", " 702.19B ". Raises UnknownRule."""
        key = normalize_number(number)
        rule = self.doc.rules.get(key)
        if rule is None:
            raise UnknownRule(key, self.nearest(key))
        return rule

    def nearest(self, number: str, count: int = 5) -> list[str]:
        """Existing numbers closest to ``number``: its would-be siblings if its parent exists, else the
        numbers of the same depth nearest in numeric order. In document order."""
        number = normalize_number(number)
        kind = _kind_of(number)
        if kind is None:
            return []
        parent = self.doc.rules.get(_parent_of(number, kind) or "")
        if (
            kind in ("rule", "subrule")
            and parent is not None
            and parent.children
            and number.startswith(parent.number)
        ):
            candidates = parent.children  # 702.19z -> the sub-rules of 702.19
        else:
            candidates = [n for n in self._sorted if self.doc.rules[n].kind == kind]  # 999.1 -> 905.x
        pos = bisect.bisect_left([rule_sort_key(n) for n in candidates], rule_sort_key(number))
        lo = max(0, min(pos - count // 2, len(candidates) - count))
        return candidates[lo : lo + count]

    def subrules(self, number: str) -> list[Rule]:
        """All descendants of the rule, in document order."""
        out: list[Rule] = []

        def walk(rule: Rule) -> None:
            for child in rule.children:
                out.append(self.doc.rules[child])
                walk(self.doc.rules[child])

        walk(self.get(number))
        return out

    def glossary(self, term: str) -> GlossaryEntry | None:
        """The entry for ``term``, ignoring case, punctuation and a plural "s" ("double-faced card")."""
        key = normalize_term(term)
        for candidate in (key, key + "s", key.removesuffix("s")):
            if candidate in self._terms:
                return self._terms[candidate]
        return None

    def complete(self, prefix: str, limit: int = 25) -> list[str]:
        """Rule numbers starting with ``prefix`` (document order), then glossary terms starting with it."""
        number = normalize_number(prefix) if prefix.strip() else ""
        out = [n for n in self.doc.rules if n.startswith(number)] if _looks_numeric(number) else []
        if len(out) < limit:
            term = normalize_term(prefix)
            out += [t for t in self.doc.glossary if normalize_term(t).startswith(term)]
        return out[:limit]


def _kind_of(number: str) -> str | None:
    """Kind a number would have by its shape (lenient: "1000" is chapter-shaped, "8.5" rule-shaped)."""
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?([a-z]*)", number)
    if not match:
        return None
    head, rule, letters = match.groups()
    if rule is None:
        return None if letters else ("section" if len(head) == 1 else "chapter")
    return "subrule" if letters else "rule"


def _looks_numeric(text: str) -> bool:
    return bool(text) and text[0].isdigit()


def printed_number(rule: Rule) -> str:
    """The number as the rules print it: "702.19." for sections, chapters and rules, "702.19b" for sub-rules."""
    return rule.number if rule.kind == "subrule" else f"{rule.number}."


def format_rule(book: RuleBook, number: str) -> str:
    """The rule, its examples and all its sub-rules, as printed, under a header naming the release."""
    rule = book.get(number)
    lines = [f"Comprehensive Rules {rule.number} (effective {book.release})"]
    for item in [rule, *book.subrules(rule.number)]:
        lines.append(f"{printed_number(item)} {item.text}")
        lines.extend(f"Example: {example}" for example in item.examples)
    return "\n".join(lines)
