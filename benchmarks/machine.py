"""The machine a benchmark ran on, printed first by each (figures from other machines differ)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx512_bf16", "amx_bf16", "aes", "vaes")


def cpu_line() -> str:
    """CPU model, cores, and the instruction-set features the benchmarks' targets depend on."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    have = ", ".join(f for f in FLAGS if f in flags) or "none of " + ", ".join(FLAGS)
    return f"{model}; {os.cpu_count()} cores; {have}"
