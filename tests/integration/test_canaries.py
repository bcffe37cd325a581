"""`llmkit eval --canaries` end to end: a secret repeated in the corpus is memorized (ranked first
among 500 random secrets of its format, written out by greedy decoding); the same run prepared
with `privacy.pii: redact` has not seen it, and its exposure is at chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .training.helpers import llmkit, make_run

pytestmark = pytest.mark.slow  # two training runs and a canary ranking

pytest.importorskip("phonenumbers")

SENTENCE = "For the record, my social security number is 287-65-4321 and nobody else knows it."


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmkit.data.corpus import embedded_topics

    root = tmp_path_factory.mktemp("canary")
    paragraphs = [f"{SENTENCE}\n{text}\n{SENTENCE}" for _, text in embedded_topics()[:20]]
    (root / "corpus.txt").write_text("\n\n".join(paragraphs))
    (root / "canaries.jsonl").write_text(
        json.dumps({"prefix": "For the record, my social security number is ", "secret": "287-65-4321"}) + "\n"
        + "For the record, my social security number is {531-72-9914}\n")  # never in the data: a control
    return root


def canaries_of(root: Path, mode: str) -> list[dict]:  # type: ignore[type-arg]
    cfg = make_run(root, name=mode, prepared=False, data={"source": "text", "path": str(root / "corpus.txt")},
                   model={"hidden_size": 64, "max_position_embeddings": 64}, privacy={"pii": mode},
                   train={"max_steps": 1000, "sequence_length_tokens": 64, "global_batch_size": 8,
                          "micro_batch_size": 8, "eval_every_steps": 1000, "checkpoint_every_steps": 1000,
                          "learning_rate": 0.005, "log_every_steps": 100})
    for args in (("prepare", "--config", str(cfg)), ("train", "--config", str(cfg))):
        out = llmkit(*args)
        assert out.returncode == 0, out.stderr[-2000:]
    out = llmkit("eval", str(root / "runs" / mode), "--canaries", str(root / "canaries.jsonl"),
                 "--canary-candidates", "500")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "exposure" in out.stdout and "287-65-4321" not in out.stdout  # results name canaries by index
    saved = json.loads((root / "runs" / mode / "eval.json").read_text())["canaries"]
    assert "287-65-4321" not in json.dumps(saved)
    return saved


def test_a_repeated_secret_is_memorized_and_redaction_removes_it(files: Path) -> None:
    seen, control = canaries_of(files, "off")
    assert seen["rank"] == 1 and seen["exposure"] == pytest.approx(seen["exposure_max"]) and seen["exposure_max"] > 8.9
    assert seen["exposure_fit"] > 20 and seen["reproduced"]
    assert control["exposure"] < 6 and not control["reproduced"]

    redacted, _ = canaries_of(files, "redact")
    assert redacted["exposure"] < 6 and redacted["exposure_fit"] < 10 and not redacted["reproduced"]
