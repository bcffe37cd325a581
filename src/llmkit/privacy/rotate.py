"""`llmkit privacy rotate`: re-encrypt a run under a new key, staged and committed like a checkpoint.

1. stage: every sealed file of the run is opened with the old key (each chunk authenticated) and
   sealed again with the new one into ``.rotate/files/<same path>``; checkpoints get a new
   ``checksums.json`` beside their re-sealed files;
2. commit: ``.rotate/COMMITTED`` (the list of files, both key ids) is written and fsynced;
3. roll forward: each staged file replaces its original (``os.replace``), then ``.rotate`` goes.

A kill before the commit leaves the originals untouched (old key; the next rotate or stage drops
the half-made stage); a kill after it leaves a journal that ``recover`` finishes the next time
any stage opens the run (new key). Either way the run is readable with one of the two keys, and
never with a mix of them once a stage has started.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from llmkit.errors import UsageError
from llmkit.faults import fault_point
from llmkit.fsutil import atomic_write_text, fsync_dir, sha256_file
from llmkit.privacy import crypto

JOURNAL = ".rotate"


def _sealed_files(root: Path) -> list[Path]:
    """Sealed files of the run, relative, leaving out hidden (temporary) folders and files."""
    out = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        if crypto.is_sealed(f):
            out.append(rel)
    return out


def recover(root: Path, log: Callable[[str], None] = lambda _: None) -> None:
    """Finish a committed rotation (roll forward) or drop a stage that never committed."""
    journal = Path(root) / JOURNAL
    if not journal.is_dir():
        return
    marker = journal / "COMMITTED"
    if not marker.exists():
        shutil.rmtree(journal, ignore_errors=True)
        log(f"removed an unfinished key rotation in {root} (the run keeps its old key)")
        return
    record = json.loads(marker.read_text(encoding="utf-8"))
    for rel in record["files"]:
        staged = journal / "files" / rel
        if staged.exists():
            os.replace(staged, Path(root) / rel)
            fsync_dir((Path(root) / rel).parent)
            fault_point("rotate")
    shutil.rmtree(journal, ignore_errors=True)
    fsync_dir(root)
    log(f"finished the key rotation of {root}: every file is sealed with key id {record['new_key_id']}")


def rotate(root: Path, old: crypto.Key, new: crypto.Key, log: Callable[[str], None] = print) -> int:
    """Re-encrypt every sealed file of run ``root`` from ``old`` to ``new``; returns the file count."""
    root = Path(root)
    if not (root / "config.yaml").exists():
        raise UsageError(f"{root} is not a run directory (no config.yaml)", "",
                         "pass runs/<name> of an encrypted run")
    recover(root, log)
    if old.id == new.id:
        raise UsageError("the new key is the old key", f"both have key id {new.id_hex}",
                         "make a new key with `llmkit privacy keygen`")
    files = _sealed_files(root)
    if not files:
        raise UsageError(f"{root} has no encrypted files", "privacy.encryption_key_env was not set when it was made",
                         "set it and rerun `llmkit prepare` / `llmkit train` to write an encrypted run")
    journal = root / JOURNAL
    stage = journal / "files"
    stage.mkdir(parents=True)
    staged: list[str] = []
    for rel in files:  # every file opens with the old key before anything is replaced
        plain = crypto.SealedFile(root / rel, key=old).read_all()
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        crypto.seal_file(stage / rel, plain, new)
        staged.append(str(rel))
        fault_point("rotate")
    for sums_file in sorted({(root / r).parent / "checksums.json" for r in files}):
        if not sums_file.exists():
            continue
        rel_dir = sums_file.parent.relative_to(root)
        sums = json.loads(sums_file.read_text(encoding="utf-8"))
        for name in sums:
            s = stage / rel_dir / name
            sums[name] = sha256_file(s) if s.exists() else sums[name]
        rel = rel_dir / "checksums.json"
        atomic_write_text(stage / rel, json.dumps(sums, indent=2))
        staged.append(str(rel))
    for d in sorted({(stage / r).parent for r in staged}):
        fsync_dir(d)
    atomic_write_text(journal / "COMMITTED", json.dumps({"old_key_id": old.id_hex, "new_key_id": new.id_hex,
                                                         "files": staged}, indent=2))
    fsync_dir(journal)
    fault_point("rotate")
    recover(root, log)
    return len(files)
