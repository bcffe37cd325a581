"""Device and price tables (data files beside this module), looked up by name."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from llmkit.errors import UsageError

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Device:
    name: str
    memory_gb: float
    bf16_tflops: float | None
    fp16_tflops: float | None
    fp32_tflops: float | None
    bandwidth_gbs: float
    interconnect: str
    skypilot: str | None = None  # the accelerator's name in SkyPilot's catalog

    def peak_flops(self, precision: str) -> float | None:
        """Dense peak FLOP/s in a precision (None: not supported)."""
        value = {"bf16": self.bf16_tflops, "fp16": self.fp16_tflops, "fp32": self.fp32_tflops}[precision]
        return None if value is None else value * 1e12

    def best_precision(self) -> str:
        return "bf16" if self.bf16_tflops else "fp16" if self.fp16_tflops else "fp32"


@dataclass(frozen=True)
class Offering:
    cloud: str
    instance: str
    device: str
    count: int
    on_demand_usd_h: float
    spot_usd_h: float | None


@cache
def devices() -> dict[str, Device]:
    data = yaml.safe_load((DATA / "devices.yaml").read_text())
    return {d["name"]: Device(**d) for d in data["devices"]}


@cache
def offerings() -> list[Offering]:
    data = yaml.safe_load((DATA / "prices.yaml").read_text())
    return [Offering(**o) for o in data["offerings"]]


def find_device(name: str) -> Device:
    """A device by name (case-insensitive); unknown names list the closest known ones."""
    table = devices()
    for known, dev in table.items():
        if known.lower() == name.lower() or known.split("-")[0].lower() == name.lower():
            return dev
    for dev in table.values():  # SkyPilot's spelling (A100 is the 40 GB card there)
        if dev.skypilot and dev.skypilot.lower() == name.lower():
            return dev
    close = difflib.get_close_matches(name.upper(), list(table), n=3, cutoff=0.3)
    raise UsageError(f"unknown device {name!r}", f"closest known: {', '.join(close) or 'none'}; all: {', '.join(table)}",
                     "use one of the known names (plan.devices or --device)")
