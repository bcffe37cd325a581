"""Question/answer pairs about the embedded documentation (``data.embedded_sft: questions``), and
the fixed held-out questions that measure whether a model answers a question worded in a new way.

Each topic of the reference (``llmkit.data.corpus.embedded_statements``) is asked in
:data:`QUESTIONS_PER_TOPIC` questions: the three :data:`PLAIN_FORMS`, and the rest drawn from
:mod:`llmkit.data.phrasings` (forms, openers, endings, lower case; a third write the topic without
backticks) and answered with its opening
paragraph, which names the topic: when the paragraph does not, the answer starts with the topic's
title ("Lambdas: Lambda expressions ..."), so that an answer says what it is about.

Validation is held out twice: every :data:`VAL_TOPIC_EVERY`-th topic is never trained on, and the
trained topics are asked again in the validation-only forms. :func:`held_out_set` asks
:data:`HELD_OUT_COUNT` trained topics in the held-out forms, which neither split uses;
:func:`score` judges an answer right when its first sentence names the topic asked, or it begins
with the opening of the topic's documentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llmkit.data.phrasings import HELD_OUT_FORMS, VALIDATION_FORMS, ask, training_questions, unquoted

QUESTIONS_PER_TOPIC = 8
# every topic is asked these three ways as written, then in five drawn questions: the quickstart's
# shown questions ("What is the `for` statement?") stay answered as trained
PLAIN_FORMS = ("What is {t}?", "Explain {t}.", "Tell me about {t}.")
VAL_TOPIC_EVERY = 10
HELD_OUT_COUNT = 24
# the quickstart shows answers to these: always trained on
SHOWN = ("the `for` statement", "the `while` statement", "the `with` statement")


@dataclass(frozen=True)
class Question:
    """A held-out question, the names a right answer may give, and the opening of the right answer."""

    question: str
    names: tuple[str, ...]
    opening: str


def names_of(subject: str) -> tuple[str, ...]:
    """What an answer about ``subject`` names: "`for`" for "the `for` statement" (a bare "for" is in
    most sentences), else the title ("Lambdas"), with and without its backticks."""
    import re

    quoted = re.findall(r"`[^`]+`", subject)
    if quoted:
        return tuple(quoted)
    return tuple(dict.fromkeys((subject, unquoted(subject))))


def named_answer(subject: str, paragraph: str) -> str:
    """The paragraph, led by the topic's title when the paragraph does not name the topic."""
    if any(n.lower() in paragraph.lower() for n in names_of(subject)):
        return paragraph
    return f"{subject[0].upper()}{subject[1:]}: {paragraph}"


def _topics(max_answer_chars: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(trained topics, validation-only topics), as (subject, its documentation's opening paragraph)."""
    from llmkit.data.corpus import embedded_statements

    topics = embedded_statements(max_answer_chars)
    val = [t for i, t in enumerate(topics) if i % VAL_TOPIC_EVERY == VAL_TOPIC_EVERY // 2 and t[0] not in SHOWN]
    return [t for t in topics if t not in val], val


def embedded_questions(seed: int, max_answer_chars: int = 320) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training, validation) pairs {prompt, completion}, seeded."""
    rng = np.random.default_rng(seed)
    trained, held_topics = _topics(max_answer_chars)
    train = [{"prompt": q, "completion": named_answer(s, a)} for s, a in trained
             for plain in [tuple(f.format(t=s) for f in PLAIN_FORMS)]
             for q in plain + tuple(training_questions(s, QUESTIONS_PER_TOPIC - len(plain), rng,
                                                       unquoted_share=1 / 3, besides=plain))]
    val = [{"prompt": q, "completion": named_answer(s, a)} for s, a in held_topics
           for q in training_questions(s, 2, rng, unquoted_share=1 / 3)]
    val += [{"prompt": q, "completion": named_answer(s, a)} for s, a in trained[::3]
            for q in training_questions(s, 1, rng, unquoted_share=1 / 3, forms=VALIDATION_FORMS)]
    train = [train[i] for i in rng.permutation(len(train))]
    return train, val


def held_out_set(max_answer_chars: int = 320) -> list[Question]:
    """:data:`HELD_OUT_COUNT` trained topics, each asked in one held-out form (in turn); every
    third without backticks, every fourth in lower case."""
    trained, _ = _topics(max_answer_chars)
    step = len(trained) / HELD_OUT_COUNT
    out = []
    for i in range(HELD_OUT_COUNT):
        subject, answer = trained[int(i * step)]
        shown = unquoted(subject) if i % 3 == 2 else subject
        question = ask(HELD_OUT_FORMS[i % len(HELD_OUT_FORMS)], shown, lower=i % 4 == 3)
        out.append(Question(question, names_of(subject), answer[:40]))
    return out


def score(answer: str, expected: Question) -> bool:
    """Whether ``answer`` is about the topic asked: its first sentence names it, or it begins as the
    topic's documentation. (Later sentences do not count: the `break` statement's documentation
    mentions `while` loops, and is no answer about the `while` statement.)"""
    text = " ".join(answer.split()).lower()
    first = text.split(". ")[0]
    return any(n.lower() in first for n in expected.names) or text.startswith(expected.opening.lower())
