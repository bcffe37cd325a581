"""A real Slurm cluster on this machine: munged, slurmctld and two slurmd (emulated nodes node1 and
node2) on 127.0.0.1, all in one temporary folder, stopped when the fixture ends.

Needs Debian's `slurm-wlm` and `munge` (`.ci/run` installs them) and root (slurmd runs jobs as
their submitter). Client commands find the cluster through ``SLURM_CONF`` in ``env``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo")


def missing() -> str | None:
    """Why no cluster can start here, or None."""
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root"
    return None


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    pids: list[int] = field(default_factory=list)

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=timeout)

    def job_state(self, job: str) -> str:
        out = self.run("scontrol", "show", "job", job, "-o").stdout
        for word in out.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "UNKNOWN"

    def stop(self) -> None:
        self.run("scancel", "--full", "--user", "root", timeout=10)
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for pid in self.pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _pid(path: Path, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text().split()[0])
        time.sleep(0.1)
    raise RuntimeError(f"{path} never appeared")


def start(root: Path, env: dict[str, str]) -> Cluster:
    """Start munged, slurmctld and slurmd node1, node2; return once both nodes are idle."""
    for d in ("munge", "state", "log", "run", "spool/node1", "spool/node2"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key, sock = root / "munge" / "munge.key", root / "munge" / "munge.sock"
    subprocess.run(["mungekey", "--create", "--force", f"--keyfile={key}"], check=True, capture_output=True)
    subprocess.run(["munged", "--force", f"--socket={sock}", f"--key-file={key}",
                    f"--pid-file={root / 'run/munged.pid'}", f"--log-file={root / 'log/munged.log'}",
                    f"--seed-file={root / 'munge/seed'}"], check=True, capture_output=True)
    cluster = Cluster(root, {**env, "SLURM_CONF": str(root / "slurm.conf")})
    cluster.pids.append(_pid(root / "run/munged.pid"))
    ctld, node1, node2 = _free_ports(3)
    cpus = os.cpu_count() or 1
    (root / "slurm.conf").write_text(f"""\
ClusterName=llmkit-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=30
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=node1 NodeHostname=localhost NodeAddr=127.0.0.1 Port={node1} CPUs={cpus} RealMemory=1000 State=UNKNOWN
NodeName=node2 NodeHostname=localhost NodeAddr=127.0.0.1 Port={node2} CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
    conf = str(root / "slurm.conf")
    try:
        subprocess.run(["slurmctld", "-f", conf, "-i"], check=True, capture_output=True, env=cluster.env)
        cluster.pids.append(_pid(root / "run/slurmctld.pid"))
        for node in ("node1", "node2"):
            subprocess.run(["slurmd", "-f", conf, "-N", node], check=True, capture_output=True, env=cluster.env)
            cluster.pids.append(_pid(root / f"run/slurmd-{node}.pid"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = cluster.run("sinfo", "-h", "-N", "-o", "%N %t").stdout.split()
            if states.count("idle") == 2:
                return cluster
            time.sleep(0.5)
        logs = "\n".join(p.read_text()[-1500:] for p in (root / "log").glob("*.log"))
        raise RuntimeError(f"the Slurm nodes never became idle: {states}\n{logs}")
    except BaseException:
        cluster.stop()
        raise
