"""Where doctor's facts come from: the only impure part of doctor.

Probes receive a :class:`Sources`; tests replace its callables with recorded outputs (e.g. the
`nvidia-smi` text of an A100 machine), so every verdict is tested without the hardware.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CommandResult:
    """What an external command printed."""

    returncode: int
    stdout: str
    stderr: str = ""


class CommandTimeout(Exception):
    """An external command did not finish within its time limit."""


@dataclass(frozen=True)
class TorchInfo:
    """The installed torch build, or why it could not be imported."""

    version: str
    cuda: str | None = None
    hip: str | None = None
    cuda_available: bool = False
    device_count: int = 0
    mps_available: bool = False
    nccl_available: bool = False
    import_error: str | None = None


@dataclass(frozen=True)
class PlatformInfo:
    """Operating system, architecture and interpreter."""

    system: str
    machine: str
    release: str
    python: tuple[int, int, int]
    cpu_count: int
    memory_bytes: int | None


def _run(argv: Sequence[str], timeout_s: float) -> CommandResult:
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(argv[0])
    try:
        out = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, errors="replace"
        )
    except subprocess.TimeoutExpired:
        raise CommandTimeout(f"{argv[0]} did not answer within {timeout_s:g} s") from None
    return CommandResult(out.returncode, out.stdout, out.stderr)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read(4_000_000)


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_info() -> TorchInfo | None:
    try:
        import torch
    except ImportError:
        return None
    except Exception as exc:  # a broken install (missing CUDA libraries, ABI mismatch)
        return TorchInfo(version=_dist_version("torch") or "?", import_error=str(exc)[:500])
    cuda_ok = bool(torch.cuda.is_available())
    dist = getattr(torch, "distributed", None)
    nccl = bool(dist and dist.is_available() and dist.is_nccl_available())
    mps = getattr(torch.backends, "mps", None)
    return TorchInfo(
        version=torch.__version__,
        cuda=torch.version.cuda,
        hip=getattr(torch.version, "hip", None),
        cuda_available=cuda_ok,
        device_count=torch.cuda.device_count() if cuda_ok else 0,
        mps_available=bool(mps and mps.is_available()),
        nccl_available=nccl,
    )


def _memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        return None


def _platform() -> PlatformInfo:
    v = sys.version_info
    return PlatformInfo(
        system=platform.system(),
        machine=platform.machine(),
        release=platform.release(),
        python=(v.major, v.minor, v.micro),
        cpu_count=os.cpu_count() or 1,
        memory_bytes=_memory_bytes(),
    )


def _disk_free(path: str) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _check_writable(path: str) -> None:
    """Raise OSError if a file cannot be created where ``path`` is (or would be)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    with tempfile.NamedTemporaryFile(dir=p, prefix=".llmkit-doctor-"):
        pass


def _connect(host: str, port: int, timeout_s: float) -> None:
    with socket.create_connection((host, port), timeout=timeout_s):
        pass


@dataclass
class Sources:
    """The fact gatherers probes call; each may be replaced in tests."""

    run: Callable[[Sequence[str], float], CommandResult] = _run
    read_text: Callable[[str], str] = _read_text
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    dist_version: Callable[[str], str | None] = _dist_version
    torch_info: Callable[[], TorchInfo | None] = _torch_info
    platform: Callable[[], PlatformInfo] = _platform
    disk_free: Callable[[str], int] = _disk_free
    check_writable: Callable[[str], None] = _check_writable
    connect: Callable[[str, int, float], None] = _connect
    shm_bytes: Callable[[], int | None] = field(
        default=lambda: shutil.disk_usage("/dev/shm").total if os.path.isdir("/dev/shm") else None
    )
