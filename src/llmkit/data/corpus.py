"""Corpora as streams of documents: the embedded default, a text file, a folder, or JSONL.

Documents are yielded one at a time and files are read line by line, so a corpus larger than
memory streams through with bounded memory.

Document boundaries (each document ends with the EOS token in the token shards):

- ``embedded``: one document per topic of Python's ``pydoc_data.topics`` (79 topics, ~465 KB,
  on every CPython install), plus one per standard-library ``.py`` file when asked;
- ``text``: one file; documents are separated by blank lines (paragraphs);
- ``dir``: one document per file matched by the glob;
- ``jsonl``: one document per line, the text in ``text_field``.

Invalid UTF-8 follows ``data.invalid_utf8``: ``error`` stops with the file and byte offset,
``replace`` substitutes U+FFFD and counts the replacements (reported by `prepare`).
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.config.schema import DataConfig
from llmkit.data.jsonl import json_lines
from llmkit.errors import ConfigError, UsageError

_BINARY_SNIFF_BYTES = 8192


@dataclass
class CorpusStats:
    """What streaming a corpus saw; filled in as documents are yielded."""

    documents: int = 0
    bytes: int = 0
    replaced_chars: int = 0
    files: int = 0
    skipped_empty_files: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)  # over the documents' text
    mix: dict[str, dict[str, Any]] | None = None  # data.mix: per source, its weight and what was drawn
    mix_stopped_by: str | None = None  # the source that ran out first

    @property
    def fingerprint(self) -> str:
        return self.sha256.hexdigest()


def _decode(raw: bytes, path: Path, offset: int, policy: str, stats: CorpusStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if policy == "error":
            raise UsageError(
                f"{path}: invalid UTF-8 at byte offset {offset + exc.start}",
                f"byte 0x{raw[exc.start]:02x} cannot start or continue a UTF-8 character",
                "convert the file to UTF-8, or set data.invalid_utf8: replace",
            ) from None
        text = raw.decode("utf-8", errors="replace")
        stats.replaced_chars += text.count("\ufffd") - raw.count("\ufffd".encode())
        return text


def _check_not_binary(path: Path, head: bytes) -> None:
    if b"\x00" in head:
        raise UsageError(
            f"{path} looks like a binary file (it contains NUL bytes)",
            "llmkit reads text corpora",
            "remove it, or narrow data.glob so it is not matched",
        )


def _lines(path: Path, policy: str, stats: CorpusStats) -> Iterator[str]:
    """Decoded lines of a file, read in binary so errors can name a byte offset."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}", "", "check the path and its permissions") from None
    with fh:
        _check_not_binary(path, fh.peek(_BINARY_SNIFF_BYTES)[:_BINARY_SNIFF_BYTES])
        offset = 0
        for raw in fh:
            yield _decode(raw, path, offset, policy, stats)
            offset += len(raw)


def _paragraphs(path: Path, policy: str, stats: CorpusStats) -> Iterator[str]:
    buf: list[str] = []
    for line in _lines(path, policy, stats):
        if line.strip():
            buf.append(line)
        elif buf:
            yield "".join(buf).rstrip("\n")
            buf = []
    if buf:
        yield "".join(buf).rstrip("\n")


def _whole_file(path: Path, policy: str, stats: CorpusStats) -> Iterator[str]:
    text = "".join(_lines(path, policy, stats))
    if text.strip():
        yield text
    else:
        stats.skipped_empty_files += 1


def _jsonl(path: Path, field_name: str, policy: str, stats: CorpusStats) -> Iterator[str]:
    for number, obj in json_lines(_lines(path, policy, stats), path):
        if not isinstance(obj, dict) or field_name not in obj:
            raise UsageError(f"{path}, line {number}: no field {field_name!r}",
                             f"found: {', '.join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__}",
                             "set data.text_field to the field that holds the text")
        if not isinstance(obj[field_name], str):
            raise UsageError(f"{path}, line {number}: field {field_name!r} is not a string", "",
                             "the text field must hold a string")
        if obj[field_name]:
            yield obj[field_name]


def embedded_topics() -> list[tuple[str, str]]:
    """(topic, text) pairs of the embedded corpus: Python's own reference documentation."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        raise ConfigError(
            "the embedded corpus (pydoc_data.topics) is missing from this Python",
            "some minimal Python builds leave out pydoc_data",
            "set data.source to text/dir/jsonl with your own corpus",
        ) from None
    return sorted(topics.items())


def embedded_statements(max_answer_chars: int = 320) -> list[tuple[str, str]]:
    """(subject, answer) of each embedded topic that opens with a titled prose paragraph: the
    subject is the title ("the `for` statement"), the answer the opening paragraph (cut at a
    sentence within ``max_answer_chars``). The quickstart's chat data and the embedded preference
    pairs are made from them."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for _, text in embedded_topics():
        lines = text.split("\n")
        if len(lines) < 3 or not set(lines[1].strip()) <= set("*=-"):
            continue
        title = lines[0].strip().replace('"', "`")
        paragraphs = [p.strip() for p in "\n".join(lines[2:]).split("\n\n") if p.strip()]
        # the opening prose paragraph: not indented code, not grammar (`::=`), not a sub-heading
        # (a line underlined with = or -)
        prose = next((p for p in paragraphs if not p.startswith((" ", "*", "=")) and len(p) > 40 and "::=" not in p
                      and not any(len(ln.strip()) >= 3 and set(ln.strip()) <= set("=-*~") for ln in p.split("\n"))),
                     None)
        if prose is None:
            continue
        answer = " ".join(prose.split()).replace('"', "`")
        if len(answer) > max_answer_chars:
            cut = answer[:max_answer_chars]
            answer = cut[: cut.rfind(". ") + 1] if ". " in cut else cut.rsplit(" ", 1)[0] + "..."
        subject = title[0].lower() + title[1:] if title[:4] == "The " else title
        if subject not in seen:  # two topics may share a title (`if` and `elif`): the first
            seen.add(subject)
            out.append((subject, answer))
    return out


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file())


MIX_SEED = 1234


def mix_name(i: int, source: Any) -> str:
    return f"{i}:{source.source}" + (f":{source.path}" if source.path else "")


def _mixed(cfg: DataConfig, stats: CorpusStats) -> Iterator[str]:
    """data.mix: each next document from a source drawn with probability proportional to its
    weight (a fixed seed, so the same config gives the same corpus); stops when the drawn source has
    no document left, so the shares stay those asked for."""
    import random

    rng = random.Random(MIX_SEED)
    names = [mix_name(i, m) for i, m in enumerate(cfg.mix)]
    streams = [_raw_documents(cfg.model_copy(update={"source": m.source, "path": m.path, "glob": m.glob,
                                                     "text_field": m.text_field, "split": m.split,
                                                     "hf_name": m.hf_name, "mix": []}), stats) for m in cfg.mix]
    weights = [m.weight for m in cfg.mix]
    total = sum(weights)
    stats.mix = {n: {"weight": w / total, "documents": 0, "bytes": 0} for n, w in zip(names, weights)}
    while True:
        i = rng.choices(range(len(streams)), weights)[0]
        doc = next(streams[i], None)
        if doc is None:
            break
        entry = stats.mix[names[i]]
        entry["documents"] += 1
        entry["bytes"] += len(doc.encode("utf-8", errors="surrogatepass"))
        yield doc
    drawn = sum(e["documents"] for e in stats.mix.values()) or 1
    for entry in stats.mix.values():
        entry["share"] = entry["documents"] / drawn
    stats.mix_stopped_by = names[i]


def _raw_documents(cfg: DataConfig, stats: CorpusStats) -> Iterator[str]:
    policy = cfg.invalid_utf8
    if cfg.mix:
        yield from _mixed(cfg, stats)
        return
    if cfg.source == "hf":
        from llmkit.data.sources import text_documents

        yield from text_documents(cfg)
        return
    if cfg.source == "embedded":
        for _, text in embedded_topics():
            yield text
        if cfg.include_stdlib_source:
            for path in _stdlib_files():
                stats.files += 1
                yield from _whole_file(path, "replace", stats)
        return
    root = Path(cfg.path or "")
    if not root.exists():
        raise UsageError(f"data.path {root} does not exist", f"data.source is {cfg.source}",
                         "fix data.path, or use data.source: embedded for the built-in corpus")
    if cfg.source == "dir":
        if not root.is_dir():
            raise UsageError(f"data.path {root} is not a directory", "data.source is dir",
                             "use data.source: text for a single file")
        files = sorted(p for p in root.glob(cfg.glob) if p.is_file())
        if not files:
            raise UsageError(f"no files match {cfg.glob!r} under {root}", "", "check data.glob")
        for path in files:
            stats.files += 1
            yield from _whole_file(path, policy, stats)
        return
    if root.is_dir():
        raise UsageError(f"data.path {root} is a directory", f"data.source is {cfg.source}",
                         "use data.source: dir for a folder of files")
    stats.files += 1
    if cfg.source == "text":
        yield from _paragraphs(root, policy, stats)
    else:
        yield from _jsonl(root, cfg.text_field, policy, stats)


def iter_documents(cfg: DataConfig, stats: CorpusStats | None = None) -> Iterator[str]:
    """Stream the corpus's documents; ``stats`` (if given) is updated as they pass."""
    stats = stats if stats is not None else CorpusStats()
    for doc in _raw_documents(cfg, stats):
        stats.documents += 1
        encoded = doc.encode("utf-8", errors="surrogatepass")
        stats.bytes += len(encoded)
        stats.sha256.update(len(encoded).to_bytes(8, "little") + encoded)
        yield doc
    if stats.documents == 0:
        where = cfg.path or "the embedded corpus"
        raise UsageError(f"the corpus at {where} has no text", "every document was empty",
                         "point data.path at files with text in them")
