"""The embedded question/answer data and its held-out questions (data.embedded_sft: questions)."""

from __future__ import annotations

from pathlib import Path

from llmkit.data.docqa import (SHOWN, _topics, embedded_questions, held_out_set, named_answer, names_of,
                               score)
from llmkit.data.phrasings import HELD_OUT_FORMS, VALIDATION_FORMS, unquoted


def test_no_held_out_question_or_form_is_in_the_sft_data() -> None:
    train, val = embedded_questions(0)
    prompts = [r["prompt"].lower() for r in train + val]
    held = held_out_set()
    assert len(held) >= 20
    for q in held:
        assert q.question.lower() not in prompts
    # nor any held-out form, whatever the topic, opener, ending or case
    stems = {f.split("{t}")[0].lower() for f in HELD_OUT_FORMS} | {f.split("{t}")[1].rstrip(".?").lower()
                                                                    for f in HELD_OUT_FORMS if f.split("{t}")[1] != "."}
    assert not [p for p in prompts for stem in stems if stem.strip() and stem in p]


def test_validation_holds_out_topics_and_phrasings() -> None:
    train, val = embedded_questions(0)
    trained_answers = {r["completion"] for r in train}
    unseen = [r for r in val if r["completion"] not in trained_answers]
    assert unseen and len({r["completion"] for r in unseen}) >= 5  # topics never trained on
    stems = [f.split("{t}")[0].lower() for f in VALIDATION_FORMS]
    rephrased = [r for r in val if r["completion"] in trained_answers]
    assert rephrased and all(any(stem in r["prompt"].lower() for stem in stems) for r in rephrased)
    assert not [r for r in train if any(stem in r["prompt"].lower() for stem in stems)]
    trained_subjects = {s for s, _ in _topics(320)[0]}
    assert set(SHOWN) <= trained_subjects  # the quickstart's shown answers are trained on
    assert {q.names for q in held_out_set()} <= {names_of(s) for s in trained_subjects}


def test_questions_are_seeded_varied_and_some_drop_the_backticks() -> None:
    a, b = embedded_questions(1), embedded_questions(1)
    assert a == b and a != embedded_questions(2)
    prompts = [r["prompt"] for r in a[0]]
    assert len(set(prompts)) == len(prompts)
    assert any("the for statement" in p for p in prompts) and any("the `for` statement" in p for p in prompts)
    assert any(p[0].islower() for p in prompts)


def test_every_answer_names_its_topic() -> None:
    for subject, paragraph in _topics(320)[0] + _topics(320)[1]:
        assert any(n.lower() in named_answer(subject, paragraph).lower() for n in names_of(subject)), subject
    assert named_answer("Lambdas", "Anonymous functions.") == "Lambdas: Anonymous functions."
    assert named_answer("the `for` statement", "The `for` statement loops.") == "The `for` statement loops."
    assert unquoted("the `for` statement") == "the for statement"


def test_an_answer_is_scored_by_the_topic_its_first_sentence_names() -> None:
    answers = dict(_topics(320)[0])
    for q in held_out_set():
        own = [s for s, a in answers.items() if a[:40] == q.opening]
        assert own and score(answers[own[0]], q)  # the documentation's paragraph is right
        assert score(named_answer(own[0], answers[own[0]]), q)  # so is the trained answer
        assert score("  " + answers[own[0]].upper(), q)  # case and spacing do not matter
        assert sum(score(a, q) for a in answers.values()) <= 3  # most other topics' answers are wrong
    held = next(q for q in held_out_set() if q.names == ("`while`",))
    assert not score("Something else. Then the `while` statement.", held)


def test_the_quickstarts_shown_questions_are_trained_as_written() -> None:
    from llmkit.quickstart import _configs

    _, sft = _configs(Path("runs"), 100, 100, 240.0)
    prompts = {r["prompt"] for r in embedded_questions(sft.train.seed)[0]}
    assert sft.eval.sample_prompts and set(sft.eval.sample_prompts) <= prompts
    assert sft.eval.held_out_questions == "embedded" and sft.data.embedded_sft == "questions"
