"""NVIDIA GPUs and CUDA: parse `nvidia-smi` output and judge it (pure functions).

`nvidia-smi` is queried as
``nvidia-smi --query-gpu=index,name,memory.total,compute_cap,driver_version --format=csv,noheader,nounits``;
its plain output's header line carries the highest CUDA version the driver supports, and
``nvidia-smi topo -p2p r`` the peer-to-peer read matrix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from llmkit.doctor.finding import Finding

QUERY_ARGS = [
    "nvidia-smi",
    "--query-gpu=index,name,memory.total,compute_cap,driver_version",
    "--format=csv,noheader,nounits",
]
P2P_ARGS = ["nvidia-smi", "topo", "-p2p", "r"]


@cache
def cuda_facts() -> dict[str, Any]:
    """The CUDA/driver/torch-wheel table (data/cuda.json)."""
    return json.loads((Path(__file__).parent / "data" / "cuda.json").read_text())


def version_tuple(text: str) -> tuple[int, ...]:
    """'525.60.13' -> (525, 60, 13); '2.13.0+cpu' -> (2, 13, 0); junk -> ()."""
    parts = re.match(r"^\s*(\d+(?:\.\d+)*)", text or "")
    return tuple(int(x) for x in parts.group(1).split(".")) if parts else ()


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as `nvidia-smi` reports it."""

    index: int
    name: str
    memory_mib: int
    compute_capability: float | None
    driver_version: str

    @property
    def bf16(self) -> bool:
        cc = self.compute_capability
        return cc is not None and cc >= cuda_facts()["bf16_min_compute_capability"]

    @property
    def flash_attention(self) -> bool:
        cc = self.compute_capability
        return cc is not None and cc >= cuda_facts()["flash_attention_min_compute_capability"]


def parse_gpu_query(text: str) -> list[GpuInfo]:
    """Parse the CSV of :data:`QUERY_ARGS`; lines that do not parse are skipped."""
    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 5 or not cells[0].isdigit():
            continue
        try:
            cc = float(cells[3])
        except ValueError:
            cc = None  # "[N/A]" on old drivers
        try:
            mem = int(float(cells[2]))
        except ValueError:
            mem = 0
        gpus.append(GpuInfo(int(cells[0]), cells[1], mem, cc, cells[4]))
    return gpus


def parse_driver_cuda(text: str) -> str | None:
    """The 'CUDA Version: 12.4' of plain `nvidia-smi` output (the driver's highest CUDA)."""
    m = re.search(r"CUDA Version:\s*([0-9.]+)", text)
    return m.group(1) if m else None


def driver_cuda_from_table(driver_version: str) -> str | None:
    """Highest CUDA major a driver supports by minor-version compatibility (when the header is missing)."""
    supported = [
        int(major)
        for major, minimum in cuda_facts()["min_driver_for_cuda_major"].items()
        if version_tuple(driver_version) >= version_tuple(minimum)
    ]
    return f"{max(supported)}.0" if supported else None


def parse_p2p(text: str) -> dict[tuple[int, int], str]:
    """Peer-to-peer status for each ordered GPU pair, e.g. {(0, 1): 'OK'} from `topo -p2p r`."""
    matrix: dict[tuple[int, int], str] = {}
    for line in text.splitlines():
        cells = line.split()
        if not cells or not re.fullmatch(r"GPU\d+", cells[0]) or cells[1].startswith("GPU"):
            continue  # not a matrix row, or the header row
        row = int(cells[0][3:])
        for col, status in enumerate(cells[1:]):
            if status != "X":
                matrix[(row, col)] = status
    return matrix


def gpu_finding(gpu: GpuInfo) -> Finding:
    """Verdict on one GPU: bf16 and FlashAttention-class kernels need compute capability >= 8.0."""
    cc = gpu.compute_capability
    facts = {
        "name": gpu.name,
        "memory_mib": gpu.memory_mib,
        "compute_capability": cc,
        "bf16": gpu.bf16,
        "flash_attention": gpu.flash_attention,
    }
    summary = f"{gpu.name}, {gpu.memory_mib / 1024:.0f} GiB, compute capability {cc}"
    if gpu.bf16:
        return Finding(
            id=f"gpu.{gpu.index}", status="ok", facts=facts,
            summary=f"{summary}: bf16 and FlashAttention-class kernels -> precision bf16",
        )
    return Finding(
        id=f"gpu.{gpu.index}", status="warn", facts=facts,
        summary=f"{summary}: no bf16 -> precision fp16 with loss scaling",
        detail="bf16 and FlashAttention-class kernels need compute capability 8.0 (Ampere) or newer; "
        "fp16 training works but needs loss scaling and can overflow.",
        fix="nothing to install; prefer a GPU of compute capability >= 8.0 for large runs",
    )


def torch_install_command(system: str, machine: str, driver_cuda: str | None) -> str:
    """The exact pip command for the torch build that fits this machine."""
    facts = cuda_facts()
    url = facts["torch_index_url"]
    if system == "Darwin":
        return "pip install 'torch>=2.6'"  # macOS wheels on PyPI carry MPS support
    if driver_cuda is None:
        if machine in ("x86_64", "AMD64"):
            return f"pip install 'torch>=2.6' --index-url {url.format(tag='cpu')}"
        return "pip install 'torch>=2.6'"  # aarch64: PyPI's wheel is the CPU build
    have = version_tuple(driver_cuda)
    legacy = facts["torch_legacy_variant"]
    builds = [(v, "'torch>=2.6'") for v in facts["torch_cuda_variants"]]  # newest first
    builds.append((legacy["cuda"], f"'torch=={legacy['torch']}'"))
    # Within the driver's CUDA major: the newest build it supports outright, else the oldest,
    # which runs by CUDA minor-version compatibility. Failing that, the newest older major.
    fits = [b for b in builds if version_tuple(b[0]) <= have]
    same = [b for b in builds if version_tuple(b[0])[:1] == have[:1]]
    same_fits = [b for b in same if b in fits]
    choice = same_fits[0] if same_fits else same[-1] if same else fits[0] if fits else None
    if choice is None:
        return f"pip install 'torch>=2.6' --index-url {url.format(tag='cpu')}"
    tag = "cu" + choice[0].replace(".", "")
    return f"pip install {choice[1]} --index-url {url.format(tag=tag)}"


def cuda_compat_finding(
    torch_cuda: str | None, driver_version: str, driver_cuda: str | None, install: str
) -> Finding:
    """Can the driver run the CUDA build of torch that is installed?"""
    facts = {"torch_cuda": torch_cuda, "driver": driver_version, "driver_cuda": driver_cuda}
    if torch_cuda is None:
        return Finding(
            id="cuda", status="warn", facts=facts,
            summary="an NVIDIA GPU is present but torch is a CPU build: the GPU will not be used",
            fix=f"pip uninstall -y torch && {install}",
        )
    if driver_cuda is None:
        return Finding(
            id="cuda", status="warn", facts=facts,
            summary=f"cannot tell which CUDA driver {driver_version} supports",
            fix="run `nvidia-smi` and compare its 'CUDA Version' with torch's build",
        )
    build, drv = version_tuple(torch_cuda), version_tuple(driver_cuda)
    minimum = cuda_facts()["min_driver_for_cuda_major"].get(str(build[0]), "?")
    if build[:1] > drv[:1]:
        return Finding(
            id="cuda", status="fail", facts=facts,
            summary=f"torch is built for CUDA {torch_cuda}, but driver {driver_version} supports "
            f"only CUDA {driver_cuda}",
            detail=f"CUDA {build[0]}.x needs driver >= {minimum}; torch will not see the GPU.",
            fix=f"upgrade the NVIDIA driver to >= {minimum}, or: pip uninstall -y torch && {install}",
        )
    if build > drv:
        return Finding(
            id="cuda", status="warn", facts=facts,
            summary=f"torch CUDA {torch_cuda} on a CUDA {driver_cuda} driver: runs by minor-version "
            "compatibility",
            detail="kernels that need JIT compilation of newer PTX may fail.",
            fix=f"upgrade the driver, or: pip uninstall -y torch && {install}",
        )
    return Finding(
        id="cuda", status="ok", facts=facts,
        summary=f"driver {driver_version} (CUDA {driver_cuda}) runs torch's CUDA {torch_cuda} build",
    )


def multi_gpu_finding(gpus: list[GpuInfo], p2p: dict[tuple[int, int], str], nccl: bool) -> Finding:
    """Multi-GPU readiness: NCCL present, and whether GPUs reach each other peer-to-peer."""
    facts = {"gpus": len(gpus), "nccl": nccl}
    if len(gpus) < 2:
        return Finding(id="multi_gpu", status="skip", summary="fewer than 2 GPUs", facts=facts)
    if not nccl:
        return Finding(
            id="multi_gpu", status="fail", facts=facts,
            summary=f"{len(gpus)} GPUs but torch has no NCCL: multi-GPU training cannot start",
            fix="install a CUDA build of torch from the official wheels (they bundle NCCL)",
        )
    missing = sorted({pair for pair, status in p2p.items() if status != "OK"})
    facts["p2p_pairs_without_access"] = len(missing)
    if not p2p:
        return Finding(
            id="multi_gpu", status="warn", facts=facts,
            summary=f"{len(gpus)} GPUs with NCCL; peer-to-peer access unknown",
            fix="run `nvidia-smi topo -p2p r` to see the P2P matrix",
        )
    if missing:
        return Finding(
            id="multi_gpu", status="warn", facts=facts,
            summary=f"{len(gpus)} GPUs with NCCL, but {len(missing)} GPU pairs have no P2P access",
            detail="NCCL falls back to copies through host memory: gradient all-reduce is slower "
            "(typical of consumer cards). If NCCL hangs at start, P2P may be reported but broken.",
            fix="expect lower multi-GPU scaling; if NCCL hangs, set NCCL_P2P_DISABLE=1",
        )
    return Finding(
        id="multi_gpu", status="ok", facts=facts,
        summary=f"{len(gpus)} GPUs, NCCL available, P2P between every pair",
    )
