"""Knowledge-layer fixtures: the real 2026-01-16 rules, the fixture cards, and one real index per session.

Building the index embeds ~4,000 passages with the real model (tens of seconds on 2 cores), so it happens
once per test session, into a session temp dir, and every retrieval test shares it. Fixture names are
specific (``rules_doc``, ``knowledge_index``, ...) so test modules can keep their own short ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hexcore.settings import KnowledgeSettings, PathSettings, Settings
from knowledge.models import Card, RulesDocument
from tests.knowledge.http_fixtures import RULES_HREF, RULES_TXT, FixtureServer, fixture_objects, write_index


@pytest.fixture(scope="session")
def rules_doc(latest_rules_path: Path) -> RulesDocument:
    from knowledge.rules import load_rules

    return load_rules(latest_rules_path)


@pytest.fixture(scope="session")
def card_list(cards_dir: Path) -> list[Card]:
    from knowledge.cards import load_card_dir

    return load_card_dir(cards_dir)


@pytest.fixture(scope="session")
def card_db(cards_dir: Path, card_list: list[Card]):
    from knowledge.card_names import NICKNAMES_FILE, CardDatabase, load_nicknames

    return CardDatabase(card_list, load_nicknames(cards_dir / NICKNAMES_FILE))


@pytest.fixture(scope="session")
def rule_book(rules_doc: RulesDocument):
    from knowledge.rules import RuleBook

    return RuleBook(rules_doc)


@pytest.fixture(scope="session")
def knowledge_graph(rules_doc: RulesDocument, card_list: list[Card]):
    from knowledge.graph import KnowledgeGraph

    return KnowledgeGraph.build(rules_doc, card_list)


@pytest.fixture(scope="session")
def retrieval_embedder():
    """The real embedded all-MiniLM-L6-v2 (one load per session, shared through ``get_embedder``)."""
    from knowledge.embeddings import get_embedder

    return get_embedder()


@pytest.fixture(scope="session")
def index_settings(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings on the real data with a session-wide state dir (where the real index is saved)."""
    state = tmp_path_factory.mktemp("knowledge-state")
    return Settings(
        paths=PathSettings(data_dir=data_dir, state_dir=state, rules_release="2026-01-16"),
        knowledge=KnowledgeSettings(),
    )


@pytest.fixture(scope="session")
def knowledge_index(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    index_settings: Settings,
    rules_doc: RulesDocument,
    card_list: list[Card],
    retrieval_embedder,
):
    """The real index: every rule, sub-rule and glossary entry of 2026-01-16 plus the fixture cards.

    Passage vectors are kept between test sessions in pytest's cache folder (``.pytest_cache``), keyed by
    model id and exact text (:class:`~knowledge.embedding_cache.CachingEmbedder`), so only the first run
    pays the ~4,000 embeddings (many minutes on a busy 2-core machine); every run still builds, saves and
    loads a real FAISS index from those real vectors, and queries are always embedded live.
    """
    from knowledge.embedding_cache import CachingEmbedder
    from knowledge.index_build import load_or_build_knowledge_index

    cache = getattr(request.config, "cache", None)  # absent under ``-p no:cacheprovider``
    folder = cache.mkdir("hexcore-embeddings") if cache is not None else tmp_path_factory.mktemp("embeddings")
    caching = CachingEmbedder(retrieval_embedder, folder)
    index = load_or_build_knowledge_index(
        index_settings, doc=rules_doc, cards=card_list, embedder=caching, progress=False
    )
    caching.save()
    return index


@pytest.fixture(scope="session")
def make_hybrid(knowledge_index, retrieval_embedder, knowledge_graph, card_db, rule_book):
    """Factory for hybrid retrievers over the session index (each with its own cache and tracker)."""
    from knowledge.retrieval import HybridRetriever

    def make(**kwargs):
        options = {"graph": knowledge_graph, "card_db": card_db, "rulebook": rule_book, "budget_ms": 1e6}
        options.update(kwargs)
        return HybridRetriever(
            knowledge_index.passages,
            knowledge_index.vectors,
            retrieval_embedder,
            texts=knowledge_index.texts,
            **options,
        )

    return make


@pytest.fixture
def site(tmp_path: Path, cards_dir: Path, latest_rules_path: Path):
    """The served folder: a rules page linking a rules .txt, a bulk-data index, and the two bulk files."""
    root = tmp_path / "site"
    (root / "media/2026/downloads").mkdir(parents=True)
    shutil.copyfile(latest_rules_path, root / RULES_TXT.lstrip("/"))
    (root / "en").mkdir()
    (root / "en/rules.html").write_text(
        "<html><body><h1>Rules</h1>"
        '<a href="https://example.invalid/docs/MTG_MTR.pdf">Tournament rules</a>'
        '<a href="/media/2026/downloads/MagicCompRules%2020260116.pdf">PDF</a>'
        f'<a class="txt" href="{RULES_HREF}">TXT</a>'
        "</body></html>",
        encoding="utf-8",
    )
    cards, rulings = fixture_objects(cards_dir)
    (root / "bulk").mkdir()
    (root / "bulk/oracle-cards-20260101.json").write_text(json.dumps(cards), encoding="utf-8")
    (root / "bulk/rulings-20260101.json").write_text(json.dumps(rulings), encoding="utf-8")
    with FixtureServer(root) as server:
        write_index(server)
        yield server
