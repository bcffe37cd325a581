"""Corpus sources, document boundaries and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.config.schema import DataConfig
from llmkit.data.corpus import CorpusStats, embedded_topics, iter_documents
from llmkit.errors import UsageError


def test_embedded_corpus_is_pydoc_topics() -> None:
    stats = CorpusStats()
    docs = list(iter_documents(DataConfig(), stats))
    assert len(docs) == len(embedded_topics()) > 50
    assert 300_000 < stats.bytes < 2_000_000
    assert any('The "for" statement' in d for d in docs)


def test_embedded_with_stdlib_source_adds_files() -> None:
    stats = CorpusStats()
    n = sum(1 for _ in iter_documents(DataConfig(include_stdlib_source=True), stats))
    assert n > len(embedded_topics()) + 50 and stats.files > 50


def test_text_file_paragraphs(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("one\nstill one\n\n\ntwo\n\nthree")
    assert list(iter_documents(DataConfig(source="text", path=str(f)))) == ["one\nstill one", "two", "three"]


def test_dir_one_document_per_file_skips_empty(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "sub" / "a.txt").write_text("ay\n\nstill ay")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "skip.md").write_text("not matched")
    stats = CorpusStats()
    docs = list(iter_documents(DataConfig(source="dir", path=str(tmp_path)), stats))
    assert docs == ["bee", "ay\n\nstill ay"] and stats.skipped_empty_files == 1


def test_jsonl_field_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": "hi"}) + "\n\n" + json.dumps({"body": "x"}) + "\n")
    with pytest.raises(UsageError, match=r"line 3: no field 'text'") as info:
        list(iter_documents(DataConfig(source="jsonl", path=str(f))))
    assert "body" in str(info.value)
    f.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(UsageError, match="line 2: not valid JSON"):
        list(iter_documents(DataConfig(source="jsonl", path=str(f))))
    f.write_text('{"body": "one"}\n{"body": "two"}\n')
    assert list(iter_documents(DataConfig(source="jsonl", path=str(f), text_field="body"))) == ["one", "two"]


def test_invalid_utf8_error_names_offset(tmp_path: Path) -> None:
    f = tmp_path / "bad.txt"
    f.write_bytes(b"good line\nbad \xff here\n")
    with pytest.raises(UsageError, match=r"bad.txt: invalid UTF-8 at byte offset 14"):
        list(iter_documents(DataConfig(source="text", path=str(f), invalid_utf8="error")))


def test_invalid_utf8_replace_counts(tmp_path: Path) -> None:
    f = tmp_path / "bad.txt"
    f.write_bytes(b"good\nbad \xff\xfe here\n")
    stats = CorpusStats()
    docs = list(iter_documents(DataConfig(source="text", path=str(f)), stats))
    assert docs == ["good\nbad \ufffd\ufffd here"] and stats.replaced_chars == 2


@pytest.mark.parametrize("content, match", [(b"", "has no text"), (b"\n\n  \n", "has no text"),
                                            (b"\x7fELF\x00\x00\x01", "binary")])
def test_empty_and_binary_files(tmp_path: Path, content: bytes, match: str) -> None:
    f = tmp_path / "x.txt"
    f.write_bytes(content)
    with pytest.raises(UsageError, match=match):
        list(iter_documents(DataConfig(source="text", path=str(f))))


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        list(iter_documents(DataConfig(source="text", path=str(tmp_path / "nope"))))
    with pytest.raises(UsageError, match="is a directory"):
        list(iter_documents(DataConfig(source="text", path=str(tmp_path))))
    with pytest.raises(UsageError, match="no files match"):
        list(iter_documents(DataConfig(source="dir", path=str(tmp_path))))


def test_fingerprint_depends_on_content(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("alpha\n\nbeta")
    a = CorpusStats()
    list(iter_documents(DataConfig(source="text", path=str(f)), a))
    f.write_text("alpha\n\nbetb")
    b = CorpusStats()
    list(iter_documents(DataConfig(source="text", path=str(f)), b))
    assert a.fingerprint != b.fingerprint
