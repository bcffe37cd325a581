"""Data as users bring it: `datasets` files (parquet, arrow, CSV, JSON), ShareGPT and multi-turn
chat with system prompts, renamed fields, mixtures with their drawn shares, and the SFT checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from llmkit.config.load import load_config
from llmkit.data.prepare import prepare
from llmkit.data.tokenizer import load_tokenizer
from llmkit.errors import UsageError

from .training.helpers import TINY, deep_update

datasets = pytest.importorskip("datasets")

DOCS = [f"Document number {i} talks about {'lists' if i % 2 else 'dicts'} and loops in Python. " * 3
        for i in range(120)]


def _cfg(tmp: Path, name: str = "d", **sections) -> Path:  # type: ignore[no-untyped-def]
    data = deep_update(TINY, {"name": name, "runs_root": str(tmp / "runs"), "tokenizer": {"vocab_size": 300},
                              **sections})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _documents(run: Path) -> list[str]:
    tok = load_tokenizer(run / "tokenizer")
    docs = []
    for split in ("train", "val"):
        ids = np.fromfile(run / "data" / f"{split}.bin", dtype=np.uint16)
        cut = np.flatnonzero(ids == tok.eos_token_id)
        docs += [tok.decode(part, skip_special_tokens=True) for part in np.split(ids, cut + 1) if len(part) > 1]
    return docs


@pytest.mark.parametrize("kind", ["parquet", "csv", "json", "arrow-dir"])
def test_pretraining_reads_datasets_files(tmp_path: Path, kind: str) -> None:
    table = datasets.Dataset.from_dict({"body": DOCS, "n": list(range(len(DOCS)))})
    path = {"parquet": tmp_path / "c.parquet", "csv": tmp_path / "c.csv", "json": tmp_path / "c.json",
            "arrow-dir": tmp_path / "saved"}[kind]
    {"parquet": table.to_parquet, "csv": table.to_csv, "json": table.to_json,
     "arrow-dir": table.save_to_disk}[kind](str(path))
    cfg = load_config(_cfg(tmp_path, data={"source": "hf", "path": str(path), "text_field": "body"}), environ={})
    meta = prepare(cfg).outputs["pretrain"]
    assert meta["train_documents"] + meta["val_documents"] == len(DOCS)
    assert sorted(d.strip() for d in _documents(tmp_path / "runs" / "d")) == sorted(d.strip() for d in DOCS)


def test_a_missing_text_field_names_the_columns(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"body": DOCS}).to_parquet(str(tmp_path / "c.parquet"))
    cfg = load_config(_cfg(tmp_path, data={"source": "hf", "path": str(tmp_path / "c.parquet")}), environ={})
    with pytest.raises(UsageError, match="no field 'text'") as err:
        prepare(cfg)
    assert "body" in err.value.detail


def test_a_mixture_draws_its_weights_and_meta_reports_them(tmp_path: Path) -> None:
    for name, marker in (("a", "Alpha"), ("b", "Beta")):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"text": f"{marker} text {i} about functions and classes."}) + "\n" for i in range(400)))
    cfg = load_config(_cfg(tmp_path, data={"mix": [{"source": "jsonl", "path": str(tmp_path / "a.jsonl"), "weight": 3},
                                                   {"source": "jsonl", "path": str(tmp_path / "b.jsonl"), "weight": 1}]}),
                      environ={})
    meta = prepare(cfg).outputs["pretrain"]
    sources = meta["mix"]["sources"]
    a, b = (sources[k] for k in sorted(sources))
    assert a["weight"] == pytest.approx(0.75) and b["weight"] == pytest.approx(0.25)
    assert a["share"] == pytest.approx(0.75, abs=0.05) and b["share"] == pytest.approx(0.25, abs=0.05)
    assert meta["mix"]["stopped_by"].endswith("a.jsonl")  # the heavier source runs out first
    docs = _documents(tmp_path / "runs" / "d")
    assert sum(d.lstrip().startswith("Alpha") for d in docs) == a["documents"] == 400
    assert sum(d.lstrip().startswith("Beta") for d in docs) == b["documents"]
    again = load_config(_cfg(tmp_path, name="d2", data=cfg.data.model_dump()), environ={})
    assert prepare(again).outputs["pretrain"]["mix"] == meta["mix"]  # seeded: the same corpus again


def _sft(tmp: Path, rows: list[dict], name: str = "s.jsonl") -> Path:  # type: ignore[type-arg]
    path = tmp / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sft_run(tmp: Path, sft_path: Path | str, strict: bool = False, **data):  # type: ignore[no-untyped-def]
    lines: list[str] = []
    cfg = load_config(_cfg(tmp, train={"task": "sft", "sequence_length_tokens": 128},
                           model={"max_position_embeddings": 128},
                           data={"sft_path": str(sft_path), "val_fraction": 0.1, **data}), environ={})
    return prepare(cfg, log=lines.append, strict=strict), lines


def test_sharegpt_and_system_prompts_are_detected_and_rendered(tmp_path: Path) -> None:
    rows = [{"system": "You answer briefly.", "conversations": [
        {"from": "human", "value": f"What is {i}?"}, {"from": "gpt", "value": f"It is {i}."},
        {"from": "human", "value": "And twice that?"}, {"from": "gpt", "value": f"{2 * i}."}]} for i in range(20)]
    result, lines = _sft_run(tmp_path, _sft(tmp_path, rows))
    meta = result.outputs["sft"]
    assert meta["source_formats"] == {"sharegpt": 20} and any("20 examples" in line and "20 sharegpt" in line for line in lines)
    assert meta["checks"] == {"empty_assistant": 0, "completion_cut": 0, "no_end_of_turn": 0}
    from llmkit.data.ragged import read_ragged

    tok = load_tokenizer(tmp_path / "runs" / "d" / "tokenizer")
    ragged = read_ragged(tmp_path / "runs" / "d" / "data" / "sft", "train", meta["dtype"], True)
    first = slice(int(ragged.offsets[0]), int(ragged.offsets[1]))
    ids, mask = np.asarray(ragged.tokens[first]), np.asarray(ragged.mask[first]).astype(bool)
    text = tok.decode(ids)
    assert "You answer briefly." in text and "And twice that?" in text
    trained = tok.decode(ids[mask])
    assert "It is" in trained and "What is" not in trained and "briefly" not in trained  # both answers, no prompt


def test_shapes_are_counted_and_an_ambiguous_example_is_an_error_not_a_guess(tmp_path: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    result, lines = _sft_run(tmp_path, _sft(tmp_path, [{"prompt": "p", "completion": "c"}, chat] * 10))
    assert result.outputs["sft"]["source_formats"] == {"prompt-completion": 10, "messages": 10}
    with pytest.raises(UsageError, match="keys of two example shapes"):
        _sft_run(tmp_path, _sft(tmp_path, [{"prompt": "p", "completion": "c", **chat}] * 10, "amb.jsonl"))


def test_sft_from_parquet_with_renamed_fields(tmp_path: Path) -> None:
    table = datasets.Dataset.from_dict({"question": [f"Q{i}?" for i in range(30)], "answer": [f"A{i}." for i in range(30)]})
    table.to_parquet(str(tmp_path / "qa.parquet"))
    result, lines = _sft_run(tmp_path, tmp_path / "qa.parquet", sft_fields={"prompt": "question", "completion": "answer"})
    meta = result.outputs["sft"]
    assert meta["source_formats"] == {"prompt-completion": 30} and meta["train_examples"] + meta["val_examples"] == 30


def test_checks_report_empty_cut_and_unterminated_answers_and_strict_refuses(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [{"prompt": f"Say {i}", "completion": f"{i}."} for i in range(20)]
    rows[3] = {"prompt": "Say nothing", "completion": "  "}
    rows[5] = {"prompt": "Ramble", "completion": "words and more words " * 80}  # far past 128 tokens
    result, lines = _sft_run(tmp_path, _sft(tmp_path, rows))
    checks = result.outputs["sft"]["checks"]
    assert checks["empty_assistant"] == 1 and checks["completion_cut"] == 1 and checks["no_end_of_turn"] == 0
    assert any("an answer is cut" in line or "the answer is cut" in line for line in lines)
    assert any("line 4" in line and "no text" in line for line in lines)
    # a chat template that drops the end-of-turn token after assistant turns
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if m.role != 'assistant' %}"
                "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    cfg = _cfg(tmp_path, name="strict", train={"task": "sft", "sequence_length_tokens": 128},
               model={"max_position_embeddings": 128}, tokenizer={"chat_template": template, "vocab_size": 300},
               data={"sft_path": str(_sft(tmp_path, rows[:3] + rows[6:], "ok.jsonl")), "val_fraction": 0.1})
    out = cli("prepare", "--config", str(cfg), "--strict", cwd=tmp_path)
    assert out.returncode == 2 and "no_end_of_turn" in out.stderr, out.stderr
    assert not (tmp_path / "runs" / "strict" / "data" / "sft").exists()
    out = cli("prepare", "--config", str(cfg), cwd=tmp_path)  # reported, not refused
    assert out.returncode == 0 and "do not end with an end-of-turn token" in out.stdout
