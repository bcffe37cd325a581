"""SFT shapes, chat rendering and loss masks on small hand-written examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmkit.data.sft import IGNORE_INDEX, collate_padded, encode_example, read_sft_file, segments, to_messages
from llmkit.errors import UsageError


def trained_text(tok, ids: np.ndarray, mask: np.ndarray) -> str:
    return tok.decode([int(i) for i, m in zip(ids, mask) if m])


def test_shapes_become_messages() -> None:
    assert to_messages({"prompt": "P", "completion": "C"}, "l1") == [
        {"role": "user", "content": "P"}, {"role": "assistant", "content": "C"}]
    assert to_messages({"instruction": "Do", "input": "this", "output": "done"}, "l2")[0]["content"] == "Do\n\nthis"
    assert to_messages({"instruction": "Do", "output": "done"}, "l3")[0]["content"] == "Do"
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                         {"role": "assistant", "content": "A"}]}
    assert to_messages(chat, "l4") == chat["messages"]


@pytest.mark.parametrize("obj, match", [
    ({"prompt": "P"}, "field 'completion' is missing"),
    ({"instruction": "I", "output": 3}, "field 'output' is a int"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "unknown role 'robot'"),
    ({"foo": 1}, "unrecognized example shape"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_examples(obj, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        to_messages(obj, "f, line 7")


def test_mask_covers_exactly_the_assistant_turn(tokenizer) -> None:
    msgs = to_messages({"prompt": "What is a list?", "completion": "A mutable sequence."}, "x")
    ids, mask = encode_example(tokenizer, msgs)
    assert len(ids) == len(mask)
    assert trained_text(tokenizer, ids, mask) == "A mutable sequence.<|im_end|>\n"
    # the whole example decodes to the template's rendering
    assert tokenizer.decode(ids.tolist()) == tokenizer.apply_chat_template(msgs, tokenize=False)


def test_multi_turn_masks_every_assistant_turn_only(tokenizer) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."}]
    ids, mask = encode_example(tokenizer, msgs)
    assert trained_text(tokenizer, ids, mask) == "Hello.<|im_end|>\nGoodbye.<|im_end|>\n"
    pieces = segments(tokenizer, msgs)
    assert [t for _, t in pieces] == [False, True, False, True]
    assert "".join(p for p, _ in pieces) == tokenizer.apply_chat_template(msgs, tokenize=False)


def test_collate_padded_shifts_and_masks(tokenizer) -> None:
    ex = encode_example(tokenizer, to_messages({"prompt": "Q", "completion": "Ans"}, "x"))
    longer = encode_example(tokenizer, to_messages({"prompt": "A longer question here", "completion": "Ans"}, "x"))
    batch = collate_padded([ex, longer], seq_len=64, pad_id=3)
    assert batch["input_ids"].shape == (2, len(longer[0]) - 1)  # padded to the longest row, not to 64
    ids, mask = ex
    n = len(ids) - 1
    assert (batch["input_ids"][0, :n] == ids[:-1]).all() and (batch["input_ids"][0, n:] == 3).all()
    labels = batch["labels"][0]
    trained = labels[labels != IGNORE_INDEX]
    assert tokenizer.decode(trained.tolist()) == "Ans<|im_end|>\n"
    assert batch["attention_mask"][0].sum() == n


def test_truncation_to_context(tokenizer) -> None:
    ex = encode_example(tokenizer, to_messages({"prompt": "word " * 50, "completion": "x"}, "x"))
    batch = collate_padded([ex], seq_len=8, pad_id=3)
    assert batch["input_ids"].shape == (1, 8) and (batch["labels"] == IGNORE_INDEX).all()


def test_file_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n\n{oops\n")
    with pytest.raises(UsageError, match=r"s.jsonl, line 3: not valid JSON"):
        list(read_sft_file(f))
    f.write_bytes(b'{"prompt": "a", "completion": "\xff"}\n')
    with pytest.raises(UsageError, match="line 1: invalid UTF-8"):
        list(read_sft_file(f))
