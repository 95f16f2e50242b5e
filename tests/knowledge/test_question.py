"""Question understanding: clauses, everyday game terms, quoted oracle text -> cards."""

from __future__ import annotations

from knowledge.question import GameTermMatcher, QuestionAnalyzer, split_concepts


def test_a_multi_situation_question_splits_into_its_clauses():
    question = (
        "Player A controls a creature with deathtouch blocking a trampler, while Player B casts "
        "a damage prevention spell on the attacking creature."
    )
    concepts = split_concepts(question)
    assert len(concepts) == 2
    assert concepts[0].startswith("Player A controls")
    assert "prevention" in concepts[1]


def test_a_one_concept_question_is_not_split():
    assert split_concepts("How does trample work?") == []
    assert split_concepts("What is the stack? Where is it?") == []  # clauses too short to stand alone


def test_concepts_are_capped_to_the_most_informative_clauses():
    question = ". ".join(f"Clause {i} mentions creature token copy number {i}" for i in range(6)) + "."
    assert len(split_concepts(question, max_concepts=3)) == 3


def test_everyday_game_terms_map_to_their_rules_whole_words_only():
    matcher = GameTermMatcher()
    found = dict(matcher.find("Player A is eliminated. In response, B's creature dies."))
    assert found["eliminated"][0] == "800.4a"
    assert found["in response"][0] == "117.7"
    assert found["dies"][0] == "700.4"
    assert matcher.find("The studies show tokenization") == []  # 'dies', 'token' inside other words


def test_game_terms_drop_rules_the_release_lacks():
    matcher = GameTermMatcher({"eliminated": ("800.4a", "999.9z")}, known=["800.4a"])
    assert matcher.find("eliminated") == [("eliminated", ["800.4a"])]
    assert GameTermMatcher({"gone": ("999.9z",)}, known=["800.4a"]).find("gone") == []


def test_quoted_oracle_text_brings_its_card(card_db):
    card = next(c for c in card_db.cards() if len(c.faces[0].oracle_text) > 60)
    face_text = card.faces[0].oracle_text
    quote = " ".join(face_text.split()[:6])
    analysis = QuestionAnalyzer(card_db).analyze(f'My creature says "{quote}". What happens?')
    assert card.name in analysis.cards


def test_analysis_without_a_card_database_or_terms_still_works():
    analysis = QuestionAnalyzer().analyze('A "quoted ability that is long enough" and a token dies.')
    assert analysis.cards == []
    assert [p for p, _ in analysis.game_terms] == ["token", "dies"]
