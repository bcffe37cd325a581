"""Tool-use conversations generated from the embedded documentation (``data.embedded_sft: tools``).

One tool, ``lookup(topic)``, "looks up" a topic of the Python reference. Each conversation asks
about a topic, the topic's name in backticks as the documentation quotes names; the assistant
calls ``lookup`` with that name (``for`` for "the `for` statement", ``Coroutines`` for
"`Coroutines`"), the tool answers with the topic's opening paragraph, and the assistant answers
with its first sentence. A few greetings teach that not every message needs the tool. Besides the
reference's topics, the built-in functions, classes and exceptions are topics too (their
docstrings answer): some 180 different arguments, so that the model has to take the name from the
question. Each topic is asked in :data:`QUESTIONS_PER_TOPIC` different questions drawn from
:mod:`llmkit.data.phrasings` (forms, openers, endings, lower case), so that the name stands in a
different place each time. The held-out forms are never in the training data:
``held_out_conversations`` asks with them, to measure whether the model calls the right tool with
the right argument for a question worded in a new way.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from llmkit.data.phrasings import held_out_questions, training_questions

LOOKUP = {"type": "function", "function": {
    "name": "lookup",
    "description": "Look up a topic of the Python reference.",
    "parameters": {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]}}}

QUESTIONS_PER_TOPIC = 8
GREETINGS = (("Hello!", "Hello! Ask me about a part of the Python language."),
             ("Thanks, that helps.", "You're welcome."),
             ("Who are you?", "An assistant that looks up the Python language reference."),
             ("Good morning.", "Good morning! Which part of Python would you like to know about?"))
_NAME = re.compile(r"`([^`]+)`")


def topic_name(subject: str) -> str:
    """The argument ``lookup`` takes for a topic: the keyword of "the `for` statement", else the title."""
    m = _NAME.search(subject)
    return m.group(1) if m else subject


def shown(subject: str) -> str:
    """A topic as the questions write it: quoted in backticks as the documentation quotes names
    ("the `for` statement", "`Coroutines`"), so the argument is what the backticks hold."""
    return subject if _NAME.search(subject) else f"`{subject}`"


def _first_sentence(text: str) -> str:
    cut = text.find(". ")
    return text[: cut + 1] if cut > 0 else text


def conversation(question: str, subject: str, answer: str) -> dict[str, Any]:
    """One example in the ``messages`` shape: the question, the call, the result, the answer."""
    return {"tools": [LOOKUP], "messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "lookup", "arguments": {"topic": topic_name(subject)}}}]},
        {"role": "tool", "content": answer},
        {"role": "assistant", "content": _first_sentence(answer)}]}


def builtin_topics(max_answer_chars: int = 100) -> list[tuple[str, str]]:
    """(subject, answer) of each documented built-in: "the `len` built-in", its docstring's first paragraph."""
    import builtins

    out = []
    for name in sorted(dir(builtins)):
        doc = getattr(getattr(builtins, name), "__doc__", None)
        if name.startswith("_") or not doc or doc.startswith(("str(object", "int([x]", "Built-in immutable")):
            continue
        first = " ".join(doc.strip().split("\n\n")[0].split())
        if len(first) > 20 and "(" not in first[:len(name) + 1]:
            out.append((f"the `{name}` built-in", first[:max_answer_chars]))
    return out


def embedded_tool_examples(seed: int, max_answer_chars: int = 100) -> list[dict[str, Any]]:
    """Every topic (the reference's and the built-ins) in every training phrasing, and the
    greetings, in a seeded order."""
    from llmkit.data.corpus import embedded_statements

    rng = np.random.default_rng(seed)
    topics = embedded_statements(max_answer_chars) + builtin_topics(max_answer_chars)
    rows: list[dict[str, Any]] = [conversation(q, subject, answer) for subject, answer in topics
                                  for q in training_questions(shown(subject), QUESTIONS_PER_TOPIC, rng)]
    for _ in range(max(1, len(rows) // (10 * len(GREETINGS)))):
        rows += [{"tools": [LOOKUP], "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                 for q, a in GREETINGS]
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def held_out_conversations(max_answer_chars: int = 100) -> list[tuple[list[dict[str, str]], str]]:
    """(the user's message as a conversation, the expected ``topic`` argument) in phrasings no
    training example uses."""
    from llmkit.data.corpus import embedded_statements

    return [([{"role": "user", "content": q}], topic_name(subject))
            for subject, _ in embedded_statements(max_answer_chars) for q in held_out_questions(shown(subject))]
