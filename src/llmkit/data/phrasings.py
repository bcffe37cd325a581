"""Ways of asking about a topic, for the conversations llmkit makes from its embedded documentation.

A question is a form ("What does {t} do?", "walk me through {t}."), between an opener ("Hi! ",
"Quick question: ") and an ending (" Thanks!"), its words sometimes in lower case; the topic is
written as the caller gives it and never changed. Training draws several different questions per
topic from the product of :data:`TRAIN_FORMS`, :data:`OPENERS` and :data:`ENDINGS`, seeded, so
that where the topic stands in the question, and what surrounds it, varies: a small model then
learns to find the topic in the question rather than to recall where a few fixed templates put it.
The forms of :data:`HELD_OUT_FORMS` are never drawn for training: questions asked with them measure
whether a model understands a phrasing it never saw.
"""

from __future__ import annotations

import numpy as np

TRAIN_FORMS = (
    "What does {t} do?", "Explain {t}.", "Tell me about {t}.", "What is {t}?", "Can you describe {t}?",
    "How does {t} work in Python?", "I have a question about {t}.", "Look up {t} for me.", "Describe {t}.",
    "What do you know about {t}?", "Give me an overview of {t}.", "When would I use {t}?",
    "Why does Python have {t}?", "How do I use {t}?", "Help me with {t}.", "Define {t}.",
    "{t}: what is it?", "Teach me {t}.", "I keep reading about {t}. What is it?", "What is {t} for?",
    "Can you explain {t} to me?", "Any notes on {t}?", "I need the documentation of {t}.",
    "What does the reference say about {t}?",
)
HELD_OUT_FORMS = ("What's the story with {t}?", "Please summarize {t}.", "Could you tell me what {t} means?",
                  "I'd like to understand {t}.")
# neither trained on nor held out: the validation split's questions about trained topics
VALIDATION_FORMS = ("What can you tell me about {t}?", "Summarise {t} in a sentence or two.",
                    "How would you describe {t}?")
OPENERS = ("", "", "", "Hi! ", "Quick question: ", "Hey, ", "Sorry to bother you. ", "In Python, ", "So, ")
ENDINGS = ("", "", "", " Thanks!", " Please keep it short.", " I'm new to Python.", " Thank you.")


def ask(form: str, topic: str, opener: str = "", ending: str = "", lower: bool = False) -> str:
    """One question: ``form`` about ``topic`` (written as given), between ``opener`` and ``ending``."""
    if lower:
        form = form.lower()
    elif opener and not opener.endswith((". ", "! ", ": ")):
        form = form[0].lower() + form[1:] if not form.startswith("{t}") else form
    return f"{opener}{form.format(t=topic)}{ending}"


def unquoted(topic: str) -> str:
    """The topic as people type it without the documentation's backticks: "the for statement"."""
    return topic.replace("`", "")


def training_questions(topic: str, count: int, rng: np.random.Generator, unquoted_share: float = 0.0,
                       forms: tuple[str, ...] = TRAIN_FORMS, besides: tuple[str, ...] = ()) -> list[str]:
    """``count`` different questions about ``topic`` from ``forms``, the openers and endings, none of
    them one of ``besides``; ``unquoted_share`` of them write the topic without backticks."""
    seen: list[str] = list(besides)
    while len(seen) < count + len(besides):
        form = forms[rng.integers(len(forms))]
        shown = unquoted(topic) if unquoted_share and rng.random() < unquoted_share else topic
        question = ask(form, shown, OPENERS[rng.integers(len(OPENERS))], ENDINGS[rng.integers(len(ENDINGS))],
                       lower=bool(rng.random() < 0.2))
        if question not in seen:
            seen.append(question)
    return seen[len(besides):]


def held_out_questions(topic: str) -> list[str]:
    """One question about ``topic`` in each held-out form, as written there."""
    return [ask(form, topic) for form in HELD_OUT_FORMS]
