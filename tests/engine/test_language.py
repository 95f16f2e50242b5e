"""Only English questions are answered; others get a clear message before anything slow runs."""

from __future__ import annotations

import pytest

from engine.errors import InvalidRequest
from engine.language import NOT_ENGLISH, check_english, is_english


@pytest.mark.parametrize(
    "question",
    [
        "How does trample work when the blocker dies?",
        "Can I respond?",
        "Jace tms brainstorm",
        "Lightning Bolt Tarmogoyf Snapcaster Mage",
        "Teferi Time Raveler bounce Oko",
        "[[Blood Moon]] Urborg Tomb Yawgmoth",
        "Trample deathtouch blocker dies damage",
        "702.19b?",
        "3/3 vs 2/2",
    ],
)
def test_english_and_card_name_questions_pass(question: str) -> None:
    assert is_english(question)
    check_english(question)


@pytest.mark.parametrize(
    "question",
    [
        "¿Cómo funciona arrollar cuando el bloqueador muere?",
        "Wie funktioniert Trampelschaden eigentlich genau?",
        "Comment fonctionne le piétinement quand le bloqueur meurt ?",
        "Come funziona travolgere quando il bloccante muore?",
        "トランプルはどう機能しますか",
        "Как работает пробивной удар?",
    ],
)
def test_other_languages_get_a_clear_message(question: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_english(question)
    assert info.value.user_message == NOT_ENGLISH and "English" in NOT_ENGLISH
