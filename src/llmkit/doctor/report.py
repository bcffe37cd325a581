"""Run the probes (each time-limited), render the report, and derive the install plan."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from llmkit.version import __version__
from llmkit.config.schema import RunConfig
from llmkit.doctor.finding import DoctorReport, Finding
from llmkit.doctor.probes import PROBES, Context, needed_extras
from llmkit.doctor.sources import Sources

SCHEMA_PATH = Path(__file__).parent / "data" / "report.schema.json"


def _run_limited(name: str, ctx: Context, timeout_s: float) -> list[Finding]:
    """Run one probe in a daemon thread; a probe that hangs or crashes becomes a finding."""
    result: list[list[Finding]] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(PROBES[name](ctx))
        except Exception as exc:  # a probe must never take doctor down with it
            error.append(exc)

    worker = threading.Thread(target=target, name=f"doctor-{name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return [Finding(id=name, status="warn", summary=f"check did not finish within {timeout_s:g} s",
                        fix="rerun `llmkit doctor`; if it persists, the underlying tool hangs")]
    if error:
        exc = error[0]
        return [Finding(id=name, status="warn", summary=f"check failed: {type(exc).__name__}: {exc}"[:300],
                        fix="rerun with `llmkit --debug doctor` and report the output")]
    return result[0]


def run_doctor(
    config: RunConfig | None = None,
    run_dir: Path | None = None,
    sources: Sources | None = None,
    network: bool = False,
    timeout_s: float = 30.0,
) -> DoctorReport:
    """Every probe, in order; never raises for what it finds on the machine."""
    if run_dir is None:
        run_dir = Path(config.runs_root) / config.name if config else Path.cwd()
    ctx = Context(sources or Sources(), config, run_dir, network)
    findings: list[Finding] = []
    for name in PROBES:
        findings += _run_limited(name, ctx, timeout_s)
    return DoctorReport(llmkit_version=__version__, findings=findings)


def report_schema() -> dict:
    """The JSON schema that `llmkit doctor --json` output validates against."""
    return DoctorReport.model_json_schema()


def install_plan(report: DoctorReport, config: RunConfig | None) -> list[str]:
    """Ordered commands that make this machine ready for ``config``. Printed, never run."""
    steps: list[str] = []
    by_id = {f.id: f for f in report.findings}
    for key in ("python", "torch", "cuda", "packages"):
        f = by_id.get(key)
        if f is not None and f.status in ("fail", "warn") and f.fix.startswith(("pip ", "install")):
            steps.append(f.fix)
    extras = sorted(needed_extras(config))
    if extras:
        steps.append(f"pip install 'llmkit[{','.join(extras)}]'")
    return steps


def render_json(report: DoctorReport) -> str:
    """The report as JSON (validates against :func:`report_schema`)."""
    return json.dumps(report.model_dump(mode="json"), indent=2)
