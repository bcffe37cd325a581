"""`llmkit prepare` through the real CLI on the embedded default corpus."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer


def test_prepare_embedded_default(cli, tmp_path: Path) -> None:
    assert cli("init", "--preset", "tiny", "run.yaml", cwd=tmp_path).returncode == 0
    out = cli("prepare", "--config", "run.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "tiny"
    assert {p.name for p in (run / "data").iterdir()} == {"train.bin", "val.bin", "meta.json"}
    tok = AutoTokenizer.from_pretrained(str(run / "tokenizer"))
    assert len(tok) == 4096 and tok.chat_template
    assert "next: llmkit train" in out.stdout


def test_prepare_bad_input_exit_codes(cli, tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"text": "a"}\nnot json\n')
    out = cli("prepare", "--config", "nope.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "not found" in out.stderr
    cli("init", "run.yaml", cwd=tmp_path)
    out = cli("prepare", "--config", "run.yaml", "--set", "data.source=jsonl", "--set", "data.path=c.jsonl",
              cwd=tmp_path)
    assert out.returncode == 2 and "line 2: not valid JSON" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs" / "tiny" / "data").exists()
