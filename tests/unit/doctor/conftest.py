"""Fake fact sources for doctor: recorded nvidia-smi outputs, chosen torch builds, fixed CPUs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from llmkit.doctor import gpu as gpulib
from llmkit.doctor.sources import CommandResult, CommandTimeout, PlatformInfo, Sources, TorchInfo

FIXTURES = Path(__file__).parents[2] / "fixtures" / "nvidia_smi"
EPYC = "model name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 amx_tile\n"
OLD_XEON = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v4\nflags\t\t: fpu sse2 avx avx2\n"
LINUX = PlatformInfo("Linux", "x86_64", "6.1", (3, 11, 7), 8, 64 * 2**30)


def torch_build(cuda: str | None = None, version: str = "2.9.1", gpus: int = 0) -> TorchInfo:
    return TorchInfo(version=version, cuda=cuda, cuda_available=gpus > 0, device_count=gpus,
                     nccl_available=cuda is not None)


def gpu_runner(case: str | None, hang: bool = False):
    """A `Sources.run` that answers nvidia-smi from a fixture folder (None: no nvidia-smi)."""

    def run(argv: Sequence[str], timeout_s: float) -> CommandResult:
        if argv[0] != "nvidia-smi" or case is None:
            raise FileNotFoundError(argv[0])
        if hang:
            raise CommandTimeout(f"nvidia-smi did not answer within {timeout_s:g} s")
        name = {tuple(gpulib.QUERY_ARGS): "query.csv", ("nvidia-smi",): "smi.txt",
                tuple(gpulib.P2P_ARGS): "p2p.txt"}[tuple(argv)]
        path = FIXTURES / case / name
        return CommandResult(0, path.read_text() if path.exists() else "")

    return run


def make_sources(
    gpu_case: str | None = None,
    torch: TorchInfo | None = None,
    cpuinfo: str = EPYC,
    hang: bool = False,
    **overrides,
) -> Sources:
    def read_text(path: str) -> str:
        if path == "/proc/cpuinfo":
            return cpuinfo
        raise FileNotFoundError(path)

    base = dict(
        run=gpu_runner(gpu_case, hang),
        read_text=read_text,
        environ={},
        torch_info=lambda: torch,
        platform=lambda: LINUX,
        disk_free=lambda path: 500 * 2**30,
        check_writable=lambda path: None,
        connect=lambda host, port, t: None,
        shm_bytes=lambda: 16 * 2**30,
    )
    base.update(overrides)
    return Sources(**base)


@pytest.fixture
def sources():
    return make_sources
