"""Data read through the `datasets` library: local parquet, arrow, CSV and JSON files, dataset
directories, and Hub datasets (``org/name``), for the pretraining corpus (``data.source: hf``)
and for SFT examples (``data.sft_path`` that is not a ``.jsonl`` file).

Local files are read whole (they are memory-mapped Arrow); a Hub dataset is streamed when
``data.streaming`` is true, or under ``auto`` (no download of the whole dataset first).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmkit.config.schema import DataConfig
from llmkit.errors import EnvironmentProblem, UsageError

BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}


def _is_hub_id(ref: str) -> bool:
    from llmkit.hub import is_hub_id

    return is_hub_id(ref)


def load(ref: str, cfg: DataConfig, what: str) -> Any:
    """A ``datasets`` split (or an iterable one, streamed) for a file, a directory or a Hub id."""
    from llmkit.optional import require

    datasets = require("datasets", "datasets", what, "or give a .jsonl file")
    path = Path(ref).expanduser()
    streaming = cfg.streaming is True
    kwargs: dict[str, Any] = {"split": cfg.split}
    try:
        if path.is_file():
            builder = BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise UsageError(f"{what}: cannot read {path.suffix or 'a file without an extension'} with datasets",
                                 f"known: {', '.join(sorted(BUILDERS))}", "convert the file, or give a dataset directory")
            extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            return datasets.load_dataset(builder, data_files={cfg.split: str(path)}, streaming=streaming, **kwargs, **extra)
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "state.json").exists():  # save_to_disk output
                loaded = datasets.load_from_disk(str(path))
                return loaded[cfg.split] if isinstance(loaded, datasets.DatasetDict) else loaded
            return datasets.load_dataset(str(path), streaming=streaming, **kwargs)
        if not _is_hub_id(ref):
            raise UsageError(f"{what}: {ref} is neither a file, a directory nor a Hub dataset id (org/name)", "",
                             "fix the path")
        stream = cfg.streaming is not False  # auto: stream Hub datasets
        return datasets.load_dataset(ref, cfg.hf_name, streaming=stream, **kwargs)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"{what}: cannot load {ref} (split {cfg.split!r})", str(exc).splitlines()[0][:300],
                         "check the path or dataset id, data.split and data.hf_name") from None
    except ConnectionError as exc:
        raise EnvironmentProblem(f"{what}: cannot reach the Hugging Face Hub for {ref}", str(exc)[:300],
                                 "download it while online (HF_DATASETS_OFFLINE=1 then reads the cache), or give a "
                                 "local file") from None


def text_documents(cfg: DataConfig) -> Iterator[str]:
    """Pretraining documents: ``data.text_field`` of every row of ``data.path``."""
    rows = load(cfg.path or "", cfg, "data.source: hf")
    field = cfg.text_field
    for i, row in enumerate(rows):
        value = row.get(field)
        if value is None and i == 0:
            raise UsageError(f"{cfg.path}: no field {field!r}", f"fields: {', '.join(map(str, row))}",
                             "set data.text_field to the column that holds the text")
        if not isinstance(value, str):
            raise UsageError(f"{cfg.path}, row {i}: {field!r} is {type(value).__name__}, not text", "",
                             "fix the row or choose another data.text_field")
        yield value


def sft_rows(cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    """(where, example) of the SFT data: a .jsonl file line by line, anything else via datasets."""
    return example_rows(cfg.sft_path or "", cfg, "data.sft_path", "SFT")


def example_rows(ref: str, cfg: DataConfig, key: str, what: str) -> Iterator[tuple[str, Any]]:
    """(where, example) of a file of examples (``key``: the config key naming it): a .jsonl file
    line by line, anything else via datasets."""
    if ref.endswith(".jsonl"):
        from llmkit.data.sft import _json_rows

        p = Path(ref)
        if not p.is_file():
            raise UsageError(f"{what} file {p} not found", "", f"set {key} to a JSONL file, a parquet/arrow/CSV "
                             "file, a dataset directory or a Hub dataset id")
        yield from _json_rows(p)
        return
    for i, row in enumerate(load(ref, cfg, key)):
        yield f"{ref}, row {i}", dict(row)
