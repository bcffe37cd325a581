"""Device and price tables (data files beside this module), looked up by name."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import date
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


@dataclass(frozen=True)
class CloudTerms:
    """How a cloud bills and how long its GPU instances take to become useful."""

    billing_increment_s: int
    minimum_s: int
    boot_s: int


@dataclass(frozen=True)
class Startup:
    image_pull_s: int
    setup_s: int
    staging_bytes_per_s: float


@cache
def devices() -> dict[str, Device]:
    data = yaml.safe_load((DATA / "devices.yaml").read_text())
    return {d["name"]: Device(**d) for d in data["devices"]}


@cache
def offerings() -> list[Offering]:
    return [Offering(**o) for o in price_table()["offerings"]]


_PRICES: list[Path] = [DATA / "prices.yaml"]


def use_prices(path: Path) -> None:
    """Price from a user's file (the schema of ``planning/data/prices.yaml``) from now on (--prices)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        for key in ("date", "clouds", "startup", "offerings"):
            data[key]
        [Offering(**o) for o in data["offerings"]]
        [CloudTerms(**t) for t in data["clouds"].values()]
        Startup(**data["startup"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot use {path} as a price list", f"{type(exc).__name__}: {exc}",
                         "copy llmkit's own (planning/data/prices.yaml in the package) and edit its figures") from None
    _PRICES[0] = Path(path)
    price_table.cache_clear()
    offerings.cache_clear()


@cache
def price_table() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(_PRICES[0].read_text(encoding="utf-8"))


def prices_age_days(today: "date | None" = None) -> tuple[str, int | None]:
    """The price list's date as written, and its age in days (None when the date does not parse)."""
    import datetime as dt

    written = str(price_table().get("date", ""))
    today = today or dt.date.today()
    for fmt in ("%Y-%m-%d", "%Y-%m"):
        try:
            return written, (today - dt.datetime.strptime(written, fmt).date()).days
        except ValueError:
            continue
    return written, None


def cloud_terms(cloud: str) -> CloudTerms:
    return CloudTerms(**price_table()["clouds"][cloud])


def startup() -> Startup:
    return Startup(**price_table()["startup"])


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
