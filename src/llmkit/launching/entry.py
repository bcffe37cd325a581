"""`llmkit launch`'s entry point: check the run for a target, render its files, write them; the
result starts the job (``Launched.start``). The CLI and the Python API both call :func:`launch`."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from llmkit.config.schema import RunConfig
from llmkit.errors import UsageError
from llmkit.fsutil import atomic_write_text
from llmkit.launching.base import Echo
from llmkit.launching.spec import LaunchSpec, build_spec, target_of
from llmkit.version import __version__


@dataclass(frozen=True)
class Launched:
    """What `launch` wrote: the folder, its files and the spec they were rendered from."""

    folder: Path
    files: dict[str, str]
    spec: LaunchSpec

    def start(self, submit: bool, echo: Echo) -> None:
        """Print how to start the job, or start it (``submit``), as its target does."""
        target_of(self.spec.target).submit(self.spec, self.folder, self.files, submit, echo)


def render(spec: LaunchSpec) -> dict[str, str]:
    """Every file of the launch: the target's own and run.yaml, the config the job reads."""
    return {**target_of(spec.target).render(spec), "run.yaml": spec.config_yaml}


def launch(cfg: RunConfig, target: str | None = None, what: str = "train", out: str | Path | None = None,
           overwrite: bool = False) -> Launched:
    """Render ``cfg`` for ``target`` (default ``launch.target``) to train it or serve its model,
    into ``out`` (default launch/<name>/<target>); refuses a folder whose files differ unless
    ``overwrite``. Nothing is started: call ``.start(submit, echo)`` on the result."""
    chosen = target or cfg.launch.target
    folder = Path(out) if out is not None else Path("launch") / cfg.name / chosen
    pins, pins_from, python = _pins(cfg)
    spec = build_spec(cfg, chosen, what, pins, pins_from, python, (folder / "run.yaml").as_posix(), __version__)
    files = render(spec)
    _write(folder, files, overwrite)
    return Launched(folder, files, spec)


def _pins(cfg: RunConfig) -> tuple[tuple[str, ...], str, str]:
    """name==version for llmkit, torch and what llmkit needs: from the run's manifest when it exists."""
    from llmkit.doctor.manifest import packages

    manifest = Path(cfg.runs_root) / cfg.name / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        versions = {k: v for k, v in data.get("packages", {}).items() if v}
        python = ".".join(str(data.get("python", platform.python_version())).split(".")[:2])
        source = f"the run's manifest ({manifest})"
    else:
        versions = {}
        for name in packages():
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                pass
        python = ".".join(platform.python_version().split(".")[:2])
        source = "this environment (no manifest yet: run `llmkit prepare` or `train` to pin the run's own)"
    order = sorted(versions, key=lambda n: (n != "torch", n != "llmkit", n))
    return tuple(f"{n}=={versions[n]}" for n in order), source, python


def _write(folder: Path, files: dict[str, str], overwrite: bool) -> None:
    """Write every file, or none: refuse a folder whose files differ unless ``overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file", "the launch files go in a folder", "give a folder path")
    differ = [n for n, text in files.items() if (folder / n).exists() and (folder / n).read_text() != text]
    other = sorted(p.name for p in folder.iterdir() if p.name not in files) if folder.is_dir() else []
    if (differ or other) and not overwrite:
        raise UsageError(f"{folder} already holds other launch files",
                         "different: " + ", ".join(differ + other),
                         "pass --overwrite to replace them, or choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        atomic_write_text(folder / name, text)
        if name.endswith((".sh", ".sbatch")):
            os.chmod(folder / name, 0o755)
