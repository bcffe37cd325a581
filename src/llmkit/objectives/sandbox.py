"""Running a model's Python code (the ``python_asserts`` reward) where it can do no harm.

Each run gets a fresh temporary directory and, on Linux, new user, mount, network and PID
namespaces (``unshare``, unprivileged): inside, the file system is a new root holding the
temporary directory (``/work``, the only writable place) and read-only binds of the system
directories the interpreter needs (``/usr``, and Python's own installation when it lives
elsewhere) — no ``/etc``, ``/home``, ``/root``, ``/tmp`` or run directories; the network has only
a loopback device that is down, so no socket reaches anything; everything the run started dies
with it. Resource limits (``setrlimit``) cap its address space, CPU time, file sizes and open
files, and a wall-clock timeout kills the whole process group.

Where namespaces are not available (containers that forbid them, other systems) ``available``
says why; the reward is then refused unless its ``allow_unsandboxed`` is set, in which case the
code runs with the limits and the temporary directory only.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_SETUP = r"""
set -e
root=$1; shift
for d in "$@"; do
  if [ -L "$d" ]; then mkdir -p "$root$(dirname "$d")"; ln -s "$(readlink "$d")" "$root$d"
  elif [ -d "$d" ]; then mkdir -p "$root$d"; mount --bind "$d" "$root$d"; mount -o remount,bind,ro "$root$d"
  fi
done
mkdir -p "$root/work" "$root/tmp"
mount --bind "$root/../work" "$root/work"
exec chroot "$root" "$PYBIN" -I -S -B /work/main.py
"""


@dataclass(frozen=True)
class Outcome:
    """How one run ended: ``passed`` (exit status 0 within the limits), and why not."""

    passed: bool
    returncode: int | None
    timed_out: bool
    output: str
    seconds: float


def _python() -> tuple[str, list[str]]:
    """The interpreter to run (its real path) and the directories it needs to start."""
    exe = os.path.realpath(sys.executable)
    base = Path(sys.base_prefix)
    candidate = base / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if candidate.exists():
        exe = os.path.realpath(candidate)
    dirs = ["/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32"]
    real_base = os.path.realpath(base)
    if not real_base.startswith("/usr/"):
        dirs.append(real_base)
    if not exe.startswith(("/usr/", real_base + "/")):
        dirs.append(os.path.dirname(exe))
    return exe, dirs


@functools.lru_cache(maxsize=1)
def available() -> str | None:
    """None when sandboxed runs work on this machine, else why not."""
    if not sys.platform.startswith("linux"):
        return f"Linux namespaces do not exist on {sys.platform}"
    if shutil.which("unshare") is None:
        return "the unshare command (util-linux) is not installed"
    probe = run("assert 1 + 1 == 2", timeout_s=20, memory_mb=512)
    if not probe.passed:
        return f"a sandboxed test run failed ({probe.output.strip()[-200:] or 'no output'})"
    return None


def _limits(memory_mb: int, cpu_s: int) -> None:
    """In the child, before exec: its resource limits (inherited by everything it starts)."""
    import resource

    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run(code: str, timeout_s: float, memory_mb: int, sandboxed: bool = True) -> Outcome:
    """Run ``code`` as a Python script in a fresh temporary directory, within the limits
    (``sandboxed``: in the namespaces above; else with the limits only)."""
    exe, dirs = _python()
    with tempfile.TemporaryDirectory(prefix="llmkit-sandbox-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        (work / "main.py").write_text(code, encoding="utf-8")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYBIN": exe, "HOME": "/work"}
        if sandboxed:
            cmd = ["unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork", "--kill-child",
                   "/bin/sh", "-c", _SETUP, "sh", str(Path(tmp) / "root"), *dirs]
            (Path(tmp) / "root").mkdir()
        else:
            cmd = [exe, "-I", "-S", "-B", "main.py"]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: _limits(memory_mb, int(timeout_s) + 1))
        try:
            out, _ = proc.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            timed_out = True
        seconds = time.monotonic() - start
    text = out.decode("utf-8", "replace")[-2000:]
    rc = None if timed_out else proc.returncode
    return Outcome(rc == 0, rc, timed_out or rc == -signal.SIGXCPU, text, seconds)
