"""Checkpoints in object storage (``train.checkpoint_uri``: ``s3://``, ``gs://``, ``az://`` ... any
fsspec URL).

A checkpoint is first committed in the run's local ``checkpoints/`` as always, then uploaded to
``<uri>/step-NNNNNN/`` file by file, and the ``COMMITTED`` object is written last: object stores
have no atomic rename, so the marker is the commit. A prefix without it (an upload that was
killed) is never taken as a checkpoint and is deleted at the next start. On resume, the newest
remote checkpoint is the one to continue from: when the local copy is missing (a new machine, a
preempted node with a wiped disk) it is downloaded, checked against its checksums, and committed
locally first. Retention deletes a remote checkpoint's marker before its files.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmkit.errors import EnvironmentProblem, RunFailure
from llmkit.faults import fault_point
from llmkit.training import checkpoint as ckpt

_STEP = re.compile(r"step-(\d+)$")
Log = Callable[[str], None]


class RemoteCheckpoints:
    """The committed checkpoints under one fsspec URL."""

    def __init__(self, uri: str):
        import fsspec

        try:
            self.fs, root = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as exc:
            raise EnvironmentProblem(f"cannot open train.checkpoint_uri {uri}", str(exc).splitlines()[0][:300],
                                     "install the fsspec package for that scheme (s3fs for s3://, gcsfs for gs://, "
                                     "adlfs for az://), e.g. pip install 'llmkit[s3]'") from None
        self.uri, self.root = uri.rstrip("/"), root.rstrip("/")

    def _steps(self) -> list[tuple[int, str]]:
        try:
            entries = self.fs.ls(self.root, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            m = _STEP.search(entry.rstrip("/"))
            if m:
                found.append((int(m.group(1)), entry.rstrip("/")))
        return sorted(found)

    def committed(self) -> list[int]:
        """Steps whose COMMITTED object exists, oldest first."""
        return [step for step, path in self._steps() if self.fs.exists(f"{path}/{ckpt.COMMITTED}")]

    def remove_partial(self) -> list[int]:
        """Delete step prefixes without COMMITTED (left by an interrupted upload)."""
        removed = []
        for step, path in self._steps():
            if not self.fs.exists(f"{path}/{ckpt.COMMITTED}"):
                self.fs.rm(path, recursive=True)
                removed.append(step)
        return removed

    def upload(self, local: Path) -> None:
        """Upload one locally committed checkpoint; COMMITTED goes last."""
        target = f"{self.root}/{local.name}"
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)  # an earlier, uncommitted upload of the same step
        files = sorted(f.relative_to(local).as_posix() for f in local.rglob("*")
                       if f.is_file() and f.name != ckpt.COMMITTED)
        try:
            for rel in files:
                self.put(local / rel, f"{local.name}/{rel}")
            self.commit(local.name, files)
        except OSError as exc:
            raise RunFailure(f"cannot upload {local.name} to {self.uri}: {exc}", "the local copy is committed; the "
                             "remote one is not (it will be removed at the next start)",
                             "check the credentials and the bucket, then resume: the next checkpoint uploads "
                             "again") from None

    def put(self, local: Path, rel: str) -> None:
        """Upload one file to ``<uri>/<rel>``."""
        self.fs.put_file(str(local), f"{self.root}/{rel}")
        fault_point("save")

    def commit(self, name: str, files: list[str]) -> None:
        """Write ``<name>/COMMITTED`` once every one of ``files`` is in the store."""
        missing = [f for f in files if not self.fs.exists(f"{self.root}/{name}/{f}")]
        if missing:
            raise RunFailure(f"{name} is missing {', '.join(missing[:4])} in {self.uri}", "an upload did not land",
                             "resume: the previous committed checkpoint is used")
        step = int(name.rsplit("-", 1)[1])
        self.fs.pipe_file(f"{self.root}/{name}/{ckpt.COMMITTED}", f"{step}\n".encode())

    def download(self, step: int, local_root: Path) -> Path:
        """Fetch a committed remote checkpoint into ``local_root`` and commit it there (verified)."""
        name = ckpt.step_dir(local_root, step).name
        tmp = local_root / f".tmp-{name}-download"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        prefix = f"{self.root}/{name}"
        for remote in self.fs.find(prefix):
            rel = remote[len(prefix) + 1:]
            if rel == ckpt.COMMITTED:
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(tmp / rel))
        ckpt.verify(tmp)  # a download that does not match its checksums is not a checkpoint
        final = ckpt.step_dir(local_root, step)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        (final / ckpt.COMMITTED).write_text(f"{step}\n")
        return final

    def apply_retention(self, keep_last: int) -> None:
        steps = self.committed()
        for step in steps[: max(0, len(steps) - keep_last)]:
            path = f"{self.root}/{ckpt.step_dir(Path('.'), step).name}"
            self.fs.rm(f"{path}/{ckpt.COMMITTED}")  # uncommit first: a half-deleted prefix is partial
            self.fs.rm(path, recursive=True)


def sync_for_resume(remote: RemoteCheckpoints, local_root: Path, log: Log, remove_partial: bool = True) -> None:
    """Before choosing a checkpoint: drop remote partial uploads (one rank only), and make sure the
    newest remote checkpoint is committed locally (downloading it if needed)."""
    for step in remote.remove_partial() if remove_partial else []:
        log(f"removed the partial upload of step {step} from {remote.uri}")
    steps = remote.committed()
    local = [step for step, _ in ckpt.committed(local_root)]
    if steps and (not local or steps[-1] > local[-1]):  # a new machine, or a wiped disk
        log(f"downloading step-{steps[-1]:06d} from {remote.uri}")
        remote.download(steps[-1], local_root)


def remote_for(uri: str | None) -> Any:
    return RemoteCheckpoints(uri) if uri else None
