"""`privacy.pii` in the real `llmkit prepare`: redacted shards and tokenizer, the report file holds
no matched text, dropped documents, and SFT conversations scrubbed too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmkit.config.load import load_config
from llmkit.data.tokenizer import load_tokenizer

from .training.helpers import make_run

pytest.importorskip("phonenumbers")

SECRETS = ["jane.doe@example.com", "(415) 555-0132", "4111 1111 1111 1111", "AKIAIOSFODNN7EXAMPLE"]


def corpus(tmp_path: Path) -> Path:
    from llmkit.data.corpus import embedded_topics

    paragraphs = [text.replace("\n\n", "\n") for _, text in embedded_topics()[:40]]
    for i, secret in enumerate(SECRETS):
        paragraphs[i * 3] += f"\nFor help write to the maintainer: {secret} today."
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs))
    return path


def prepared_text(run: Path) -> str:
    tok = load_tokenizer(run / "tokenizer")
    ids = np.fromfile(run / "data" / "train.bin", dtype=np.uint16 if len(tok) < 65536 else np.uint32)
    val = np.fromfile(run / "data" / "val.bin", dtype=ids.dtype)
    return tok.decode(np.concatenate([ids, val]).tolist())


@pytest.mark.parametrize("mode", ["redact", "report", "drop_document"])
def test_prepare_applies_privacy_pii(tmp_path: Path, mode: str, cli) -> None:
    cfg = make_run(tmp_path, name=mode, prepared=False, data={"source": "text", "path": str(corpus(tmp_path))},
                   privacy={"pii": mode})
    out = cli("prepare", "--config", str(cfg))
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "runs" / mode
    meta = json.loads((run / "data" / "meta.json").read_text())
    assert meta["pii"]["counts"]["EMAIL"] == 1 and meta["pii"]["counts"]["CARD"] == 1
    assert meta["pii"]["counts"]["PHONE"] == 1 and meta["pii"]["counts"]["CREDENTIAL"] == 1
    assert "privacy: PII" in out.stdout and "names and places: not detected (no spaCy English model installed" in out.stdout
    text = prepared_text(run)
    vocab = json.dumps(json.loads((run / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"])
    from llmkit.report.html import _privacy
    from llmkit.rundir import RunDir

    shown = _privacy(RunDir(run))  # the run report's privacy table
    assert f"<td>{mode}</td>" in shown and "<th>pretrain: EMAIL</th><td>1</td>" in shown
    if mode == "report":
        assert all(s in text for s in SECRETS)  # unchanged data; only the report
        lines = [json.loads(x) for x in (run / "pii_report.jsonl").read_text().splitlines()]
        assert {x["type"] for x in lines} == {"EMAIL", "PHONE", "CARD", "CREDENTIAL"}
        assert set(lines[0]) == {"source", "document", "line", "type"}
        report = (run / "pii_report.jsonl").read_text()
        assert not any(s in report or s.replace(" ", "") in report for s in SECRETS)
    else:
        assert not any(s in text for s in SECRETS) and "jane.doe" not in vocab and "AKIAIOS" not in vocab
        if mode == "redact":
            assert all(f"<{t}>" in text for t in ("EMAIL", "PHONE", "CARD", "CREDENTIAL"))
        else:
            assert meta["pii"]["documents_dropped"] == 4 and "maintainer:" not in text


def test_sft_conversations_are_scrubbed(tmp_path: Path) -> None:
    from llmkit.data.prepare import prepare

    data = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(20)]
    rows[3]["completion"] = "mail me at bob.smith@example.org"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_run(tmp_path, name="sft", prepared=False, train={"task": "sft"},
                   data={"sft_path": str(data), "val_fraction": 0.1}, privacy={"pii": "redact"})
    result = prepare(load_config(cfg, environ={}))
    assert result.outputs["sft"]["pii"]["counts"]["EMAIL"] == 1
    run = tmp_path / "runs" / "sft"
    tok = load_tokenizer(run / "tokenizer")
    blob = b"".join(p.read_bytes() for p in (run / "data" / "sft").glob("*.tokens.bin"))
    ids = np.frombuffer(blob, dtype=np.uint16 if len(tok) < 65536 else np.uint32)
    text = tok.decode(ids.tolist())
    assert "bob.smith" not in text and "<EMAIL>" in text


def test_names_and_places_with_presidio_and_a_local_spacy_pipeline(tmp_path: Path) -> None:
    """The Presidio path end to end, offline: a spaCy pipeline saved to a folder (a rule-based
    entity ruler stands in for a statistical model, which cannot be downloaded here)."""
    spacy = pytest.importorskip("spacy")
    pytest.importorskip("presidio_analyzer")
    from llmkit.data.prepare import prepare

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": "Jane Doe"},
                                               {"label": "GPE", "pattern": "Springfield"}])
    nlp.to_disk(tmp_path / "pipeline")
    data = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(20)]
    rows[5]["completion"] = "Jane Doe lives in Springfield; write to jane@example.com"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_run(tmp_path, name="ner", prepared=False, train={"task": "sft"},
                   data={"sft_path": str(data), "val_fraction": 0.1},
                   privacy={"pii": "redact", "ner_model": str(tmp_path / "pipeline")})
    logged: list[str] = []
    result = prepare(load_config(cfg, environ={}), log=logged.append)
    counts = result.outputs["sft"]["pii"]["counts"]
    assert counts["NAME"] == 1 and counts["LOCATION"] == 1 and counts["EMAIL"] == 1
    assert result.outputs["sft"]["pii"]["names_and_addresses"] == "detected with Presidio (spaCy pipeline)"
    assert any("names and places: detected with Presidio" in line for line in logged)
    run = tmp_path / "runs" / "ner"
    tok = load_tokenizer(run / "tokenizer")
    blob = b"".join(p.read_bytes() for p in (run / "data" / "sft").glob("*.tokens.bin"))
    text = tok.decode(np.frombuffer(blob, dtype=np.uint16).tolist())
    assert "Jane" not in text and "Springfield" not in text and "<NAME> lives in <LOCATION>" in text


def test_a_named_ner_model_that_is_missing_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("presidio_analyzer")
    from llmkit.data.prepare import prepare
    from llmkit.errors import EnvironmentProblem

    cfg = make_run(tmp_path, name="nm", prepared=False, privacy={"pii": "redact", "ner_model": "en_core_web_xl"})
    with pytest.raises(EnvironmentProblem, match="never downloads"):
        prepare(load_config(cfg, environ={}))
