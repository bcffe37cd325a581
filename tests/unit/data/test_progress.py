"""prepare's progress over a corpus: shares of the known size with an ETA, quiet for small work."""

from __future__ import annotations

from pathlib import Path

from llmkit.config.schema import DataConfig
from llmkit.data import progress
from llmkit.data.progress import ByteProgress, corpus_bytes


def test_lines_give_the_share_of_the_corpus_and_an_eta(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(progress, "QUIET_S", 0.0)
    lines: list[str] = []
    docs = ["x" * 100] * 20
    assert list(ByteProgress("data: encoding", 2000, lines.append, interactive=False).wrap(docs)) == docs
    shares = [line for line in lines if "%" in line]
    assert shares[0].startswith("data: encoding: 10% (0.0 of 0.0 MB), ETA ") and shares[-1].startswith("data: encoding: 100%")
    assert len(shares) == 10 and lines[-1].startswith("data: encoding: 0.0 MB in ")


def test_small_work_prints_nothing_and_sizes_are_known_for_files(tmp_path: Path) -> None:
    lines: list[str] = []
    list(ByteProgress("x", 10, lines.append, interactive=False).wrap(["abcdefghij"]))
    assert lines == []
    (tmp_path / "c.txt").write_text("hello world\n\nagain\n")
    assert corpus_bytes(DataConfig(source="text", path=str(tmp_path / "c.txt"))) == 19
    assert corpus_bytes(DataConfig()) > 400_000  # the embedded corpus
    assert corpus_bytes(DataConfig(source="hf", path="x.parquet")) is None
