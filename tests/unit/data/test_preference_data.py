"""Preference examples: every accepted shape read into prompt and answers, the window cut from the
prompt's left (never the answer), and what is dropped and why."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from llmkit.data.preference import Record, embedded_records, encode, render, to_record
from llmkit.errors import UsageError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from families import tokenizer  # noqa: E402

USER = {"role": "user", "content": "What is 2+2?"}
GOOD = {"role": "assistant", "content": "4"}
BAD = {"role": "assistant", "content": "5"}


def test_pair_of_strings() -> None:
    r = to_record({"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}, "line 1")
    assert (r.shape, r.prompt, r.answers) == ("pair", [USER], ([GOOD], [BAD]))


def test_ultrafeedback_answers_repeat_the_prompt() -> None:
    """UltraFeedback-binarized: the answers are whole conversations that start with the prompt."""
    r = to_record({"prompt": "What is 2+2?", "chosen": [USER, GOOD], "rejected": [USER, BAD]}, "row 0")
    assert r.answers == ([GOOD], [BAD])


def test_conversations_split_at_their_shared_start() -> None:
    turn = [USER, {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    r = to_record({"chosen": turn + [{"role": "assistant", "content": "6"}],
                   "rejected": turn + [{"role": "assistant", "content": "7"}]}, "row 3")
    assert r.shape == "conversations" and r.prompt == turn
    assert r.answers == ([{"role": "assistant", "content": "6"}], [{"role": "assistant", "content": "7"}])


def test_hh_rlhf_text() -> None:
    start = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke"
    r = to_record({"chosen": start + "\n\nAssistant: A pun.", "rejected": start + "\n\nAssistant: No."}, "row 1")
    assert [m["role"] for m in r.prompt] == ["user", "assistant", "user"]
    assert r.prompt[-1]["content"] == "Tell me a joke"
    assert r.answers == ([{"role": "assistant", "content": "A pun."}], [{"role": "assistant", "content": "No."}])


def test_kto_unpaired_and_renamed_fields() -> None:
    r = to_record({"q": "What is 2+2?", "a": "5", "ok": "false", "system": "Be brief."}, "line 9",
                  {"prompt": "q", "completion": "a", "label": "ok"})
    assert (r.shape, r.label, r.answers) == ("unpaired", False, ([BAD],))
    assert r.prompt[0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("raw,message", [
    ({"prompt": "x", "chosen": "a"}, "no 'rejected'"),
    ({"prompt": "x", "chosen": "a", "rejected": "b", "label": True}, "keys of a pair"),
    ({"prompt": "x", "completion": "a", "label": "maybe"}, "'label' must be true or false"),
    ({"chosen": "plain text", "rejected": "other text"}, "text without a prompt"),
    ({"prompt": [USER, GOOD], "chosen": "a", "rejected": "b"}, "ends with an assistant turn"),
    ({"text": "hello"}, "unrecognized example shape"),
])
def test_bad_examples_name_their_line(raw: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        to_record(raw, "data.jsonl, line 7")
    assert "line 7" in str(err.value)


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return tokenizer("qwen2.5", vocab=300)


def test_answers_masked_and_prompt_cut_from_the_left(tok) -> None:  # type: ignore[no-untyped-def]
    long_prompt = [{"role": "user", "content": "word " * 200}]
    r = Record("x", "pair", long_prompt, ([{"role": "assistant", "content": "short"}],
                                         [{"role": "assistant", "content": "a longer answer than that"}]))
    rows, why = encode(tok, r, 64)
    assert why is None and rows is not None
    for (ids, mask), answer in zip(rows, r.answers):
        assert len(ids) <= 65 and len(ids) == len(mask)
        full_answer = render(tok, long_prompt, answer)[1]
        assert list(ids[mask == 1]) == full_answer  # the whole answer, end-of-turn included
        assert mask[0] == 0 and np.all(np.diff(mask.astype(int)) >= 0)  # prompt, then answer
    prompts = [ids[mask == 0] for ids, mask in rows]
    assert np.array_equal(prompts[0], prompts[1])  # both answers keep the same (cut) prompt
    assert list(prompts[0]) == render(tok, long_prompt, r.answers[0])[0][-len(prompts[0]):]  # its right end


def test_drops(tok) -> None:  # type: ignore[no-untyped-def]
    a = [{"role": "assistant", "content": "same"}]
    assert encode(tok, Record("x", "pair", [USER], (a, a)), 64) == (None, "identical")
    empty = [{"role": "assistant", "content": "  "}]
    assert encode(tok, Record("x", "pair", [USER], (a, empty)), 64) == (None, "empty_answer")
    long = [{"role": "assistant", "content": "many words " * 100}]
    assert encode(tok, Record("x", "pair", [USER], (a, long)), 64) == (None, "answer_cut")


def test_embedded_pairs_hold_out_statements() -> None:
    train, val = embedded_records(0.1, seed=3)
    subjects = lambda recs: {r.where for r in recs}  # noqa: E731
    assert train and val and not subjects(train) & subjects(val)
    answers_of_val = {r.answers[0][0]["content"] for r in val}
    for r in train + val:
        assert r.answers[0] != r.answers[1]
    assert all(r.answers[1][0]["content"] in answers_of_val for r in val)  # rejected: other held-out statements
    again = embedded_records(0.1, seed=3)
    assert [r.answers for r in again[0]] == [r.answers for r in train]  # seeded
