"""A studio job's own process: ``python -m llmkit.studio.job RUN_DIR KIND``.

It runs the commands of ``RUN_DIR/studio/jobs/KIND.json`` one after the other (``python -m llmkit
...``, output appended to ``KIND.log``), and keeps that record up to date: its pid and process start
time, the phase, the status (running, stopped, failed, done) and the exit code. SIGTERM is passed
to the command running, and the job ends as stopped. The command gets SIGTERM too when this
process dies (Linux), so a training run never outlives its job unseen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llmkit.rundir import RunDir
from llmkit.studio.jobs import PHASES, log_path, process_start_time, record_path, write_record


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_job(run: RunDir, kind: str) -> int:
    path = record_path(run, kind)
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    record.update(pid=os.getpid(), proc_start=process_start_time(os.getpid()), status="running",
                  started=time.time())
    write_record(path, record)
    child: dict[str, subprocess.Popen[bytes] | None] = {"p": None}
    stopping = {"yes": False}

    def on_term(_signum: int, _frame: Any) -> None:
        stopping["yes"] = True
        if child["p"] is not None and child["p"].poll() is None:
            child["p"].send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    code = 0
    with log_path(run, kind).open("ab", buffering=0) as log:
        for command in record["commands"]:
            if stopping["yes"]:
                break
            record["phase"] = PHASES.get(command["phase"], command["phase"])
            write_record(path, record)
            log.write(f"$ {' '.join(command['argv'])}\n".encode())
            child["p"] = subprocess.Popen([sys.executable, "-m", *command["argv"]], stdout=log, stderr=log,
                                          stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            record.update(child_pid=child["p"].pid, child_proc_start=process_start_time(child["p"].pid))
            write_record(path, record)
            code = child["p"].wait()
            if code != 0:
                break
    status = "stopped" if stopping["yes"] else "done" if code == 0 else "failed"
    record.update(status=status, exit_code=code, ended=time.time())
    write_record(path, record)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(RunDir(Path(sys.argv[1])), sys.argv[2]))
