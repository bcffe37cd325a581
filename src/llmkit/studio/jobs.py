"""Background jobs the studio starts: ``llmkit`` commands run by a job process of their own
(``python -m llmkit.studio.job``), in a session of its own, so that they outlive the studio.

Each run holds one record per kind of job (``studio/jobs/<kind>.json``: the commands, the job's
pid and its process start time, phase, status, exit code) and its log (``<kind>.log``). Only the
job process writes its record once it has started; the studio reads it, and decides from the pid
whether a job said to be running is still alive: one that died is shown as failed, with its log's
last lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmkit.fsutil import atomic_write_text
from llmkit.rundir import RunDir
from llmkit.studio.workspace import Refused, log_tail

KINDS = ("train", "eval", "export")
PHASES = {"prepare": "preparing", "train": "training", "eval": "evaluating", "report": "reporting",
          "export": "exporting"}
LIVE = ("starting", "running", "stopping")
START_GRACE_S = 60.0
"""A record still ``starting`` after this long without a pid: its job process never ran."""


def jobs_dir(run: RunDir) -> Path:
    return run.root / "studio" / "jobs"


def record_path(run: RunDir, kind: str) -> Path:
    return jobs_dir(run) / f"{kind}.json"


def log_path(run: RunDir, kind: str) -> Path:
    return jobs_dir(run) / f"{kind}.log"


def write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def read_record(run: RunDir, kind: str) -> dict[str, Any] | None:
    path = record_path(run, kind)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (to tell it from a later process given the same
    pid), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return "unknown"  # no /proc (macOS): alive, start time unknown
    fields = stat[stat.rfind(")") + 2:].split()
    if fields and fields[0] == "Z":
        return None  # a zombie has exited
    return fields[19] if len(fields) > 19 else "unknown"


def alive(record: dict[str, Any], who: str = "") -> bool:
    """Whether the job process (``who`` "child_": the command it runs) is still the one recorded."""
    pid = record.get(f"{who}pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    started, recorded = process_start_time(pid), record.get(f"{who}proc_start")
    return started is not None and (started == recorded or "unknown" in (started, recorded))


def state(run: RunDir, kind: str) -> dict[str, Any] | None:
    """The job's record as it stands, its status corrected for a job process that died (failed,
    with the log's last lines) or never started."""
    record = read_record(run, kind)
    if record is None:
        return None
    status = record.get("status")
    if status == "starting" and "pid" not in record:
        if time.time() - float(record.get("created", 0)) > START_GRACE_S:
            record.update(status="failed", reason="the job process never started")
    elif status in LIVE and not alive(record):
        if alive(record, "child_"):  # told to stop when its job died (Linux): busy until it has
            record.update(status="stopping", reason="the job process died; its command is stopping")
        else:
            record.update(status="failed", reason="the job process died (killed, or the machine restarted)")
    if record.get("status") == "failed":
        record["log_tail"] = log_tail(log_path(run, kind))
    return record


def busy(run: RunDir) -> str | None:
    """The kind of job running on this run, if any."""
    for kind in KINDS:
        record = state(run, kind)
        if record is not None and record.get("status") in LIVE:
            return kind
    return None


@contextlib.contextmanager
def _locked(run: RunDir) -> Iterator[None]:
    """One studio request at a time starts a job on a run (two studios on one workspace too)."""
    jobs_dir(run).mkdir(parents=True, exist_ok=True)
    with (jobs_dir(run) / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def start(run: RunDir, kind: str, commands: list[tuple[str, list[str]]], workspace: Path,
          env: dict[str, str] | None = None) -> dict[str, Any]:
    """Start a job running ``commands`` (phase, llmkit's arguments) one after the other in ``workspace``."""
    with _locked(run):
        running = busy(run)
        if running is not None:
            raise Refused(f"{run.root.name} is busy {PHASES.get(running, running)}",
                          "one job at a time runs on a run", "wait for it to end, or stop it", status=409)
        record = {"kind": kind, "status": "starting", "created": time.time(),
                  "commands": [{"phase": phase, "argv": ["llmkit", *args]} for phase, args in commands]}
        write_record(record_path(run, kind), record)
        with log_path(run, kind).open("ab") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: {kind} started from the studio\n".encode())
        subprocess.Popen([sys.executable, "-m", "llmkit.studio.job", str(run.root.resolve()), kind],
                         cwd=workspace, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env=env)
    return record


def stop(run: RunDir, kind: str) -> dict[str, Any]:
    """Ask a running job to stop: SIGTERM to its job process, which passes it to the command
    running (``llmkit train`` finishes its step, writes a checkpoint and exits, as on the CLI); to
    the command itself when its job process has died."""
    record = state(run, kind)
    if record is None or record.get("status") not in LIVE:
        raise Refused(f"no {kind} job is running on {run.root.name}", "", "", status=409)
    for who in ("", "child_"):
        if alive(record, who):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(record[f"{who}pid"]), signal.SIGTERM)
            return record
    raise Refused(f"the {kind} job on {run.root.name} is starting", "it has no process to signal yet",
                  "try again in a moment", status=409)
