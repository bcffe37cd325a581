"""Questions about a topic: varied, seeded, the topic written as given, held-out forms never drawn."""

from __future__ import annotations

import numpy as np

from llmkit.data.phrasings import HELD_OUT_FORMS, TRAIN_FORMS, ask, held_out_questions, training_questions

TOPICS = ("the `for` statement", "`Coroutines`", "`Identifiers (Names)`", "the `len` built-in")


def _draw(seed: int, count: int = 8) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [training_questions(t, count, rng) for t in TOPICS]


def test_training_questions_are_distinct_seeded_and_keep_the_topic_as_written() -> None:
    a, b = _draw(3), _draw(3)
    assert a == b and a != _draw(4)
    for topic, questions in zip(TOPICS, a):
        assert len(set(questions)) == 8
        assert all(q.count(topic) == 1 for q in questions)  # never lower-cased, never dropped


def test_the_topic_stands_in_many_places_and_in_lower_case_questions() -> None:
    questions = [q for qs in _draw(0, 40) for q in qs]
    starts = {q.index(t) for qs, t in zip(_draw(0, 40), TOPICS) for q in qs}
    assert len(starts) > 20
    assert any(q[0].islower() for q in questions) and any(q[0].isupper() for q in questions)
    used = {f for f in TRAIN_FORMS if any(f.split("{t}")[0].lower() in q.lower() for q in questions)}
    assert len(used) == len(TRAIN_FORMS)


def test_no_training_question_is_built_on_a_held_out_form() -> None:
    assert not set(TRAIN_FORMS) & set(HELD_OUT_FORMS)
    for topic, questions in zip(TOPICS, _draw(0, 60)):
        held = [h.lower().rstrip(".?") for h in held_out_questions(topic)]
        assert len(held) == len(HELD_OUT_FORMS)
        assert not [q for q in questions for h in held if h in q.lower()]


def test_an_opener_before_a_capitalised_form_lowers_it_unless_it_ends_a_sentence() -> None:
    assert ask("Explain {t}.", "`x`", "So, ") == "So, explain `x`."
    assert ask("Explain {t}.", "`x`", "Hi! ", " Thanks!") == "Hi! Explain `x`. Thanks!"
    assert ask("{t}: what is it?", "`X`", "So, ") == "So, `X`: what is it?"
    assert ask("What is {t}?", "`For`", lower=True) == "what is `For`?"
