"""`llmkit launch`: render (and optionally submit) the run for Slurm, Kubernetes, SkyPilot or Docker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import typer

from llmkit.cli.options import LaunchTarget, LaunchWhat, SetOpt


def register(app: typer.Typer) -> None:
    """Add `launch` to the app."""
    app.command("launch")(launch)


def launch(
    config: Path = typer.Option(..., "--config", "-c", help="Run config YAML file."),
    overrides: list[str] = SetOpt,
    target: LaunchTarget = typer.Option(None, "--target", "-t", help="Engine to render for (default: launch.target)."),
    what: LaunchWhat = typer.Option(LaunchWhat("train"), "--what", help="Train the run, or serve its final model."),
    out: Path = typer.Option(None, "--out", help="Folder for the files (default: launch/<name>/<target>)."),
    submit: bool = typer.Option(False, "--submit", help="Also submit: sbatch (Slurm), the SkyPilot API or CLI, "
                                "docker build + run; Kubernetes: print the kubectl lines."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in --out that differ."),
) -> None:
    """Render the run as an sbatch script, Kubernetes manifests, a SkyPilot task or a Dockerfile."""
    from llmkit import __version__
    from llmkit.config.load import load_config
    from llmkit.launch import render
    from llmkit.launch.spec import build_spec

    cfg = load_config(config, overrides)
    chosen = target.value if target else cfg.launch.target
    folder = out if out is not None else Path("launch") / cfg.name / chosen
    pins, pins_from, python = _pins(cfg)
    spec = build_spec(cfg, chosen, what.value, pins, pins_from, python, (folder / "run.yaml").as_posix(), __version__)
    files = render(spec)
    _write(folder, files, overwrite)
    for name in files:
        typer.echo(f"wrote {folder / name}")
    _estimate(spec)
    for note in spec.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"grace before a kill: {spec.grace_s} s (one step and one checkpoint, from the plan)"
               if spec.what == "train" else f"serve: port {spec.serve_port}, /ready and /health probes")
    _next(spec, folder, files, submit)


def _pins(cfg: Any) -> tuple[tuple[str, ...], str, str]:
    """name==version for llmkit, torch and what llmkit needs: from the run's manifest when it exists."""
    import importlib.metadata
    import platform

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
    from llmkit.errors import UsageError
    from llmkit.fsutil import atomic_write_text

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


def _estimate(spec: Any) -> None:
    e = spec.estimate
    if e is None:
        typer.echo("plan: no estimate for CPU nodes (`llmkit plan --this-machine` times this machine)")
        return
    hours = f"{e.hours:.2f} h" if e.hours is not None else "time unknown"
    cost = (f"${e.cost_usd:,.0f} ({e.offering})" if e.cost_usd is not None
            else "no list price (your own hardware)" if spec.target != "skypilot" or spec.cloud == "kubernetes"
            else "no price listed")
    typer.echo(f"plan: {e.num_devices} x {e.device}, {'fits' if e.fits else 'does NOT fit'} "
               f"(micro-batch {e.micro_batch or '-'}), {hours}, {cost}")


def _next(spec: Any, folder: Path, files: dict[str, str], submit: bool) -> None:
    """Print how to start it, or start it (--submit)."""
    from llmkit.errors import EnvironmentProblem, RunFailure
    from llmkit.launch import docker, kubernetes, skypilot

    main = next(n for n in files if n != "run.yaml" and not n.startswith("Dockerfile"))
    path = (folder / main).as_posix()
    if spec.target == "slurm":
        if not submit:
            typer.echo(f"submit: sbatch {path}")
            return
        if shutil.which("sbatch") is None:
            raise EnvironmentProblem("--submit: sbatch is not on PATH", f"the files are written in {folder}",
                                     f"run on a Slurm login node: sbatch {path}")
        done = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True)
        if done.returncode != 0:
            raise RunFailure("sbatch refused the job", done.stderr.strip()[-500:], f"fix that, then: sbatch {path}")
        typer.echo(f"submitted job {done.stdout.strip().split(';')[0]}")
    elif spec.target == "kubernetes":
        typer.echo(f"secrets: {kubernetes.secret_command(spec)}")
        typer.echo(f"{'submit' if submit else 'start'}: kubectl apply -f {path}"
                   + ("  (llmkit does not call kubectl; run these two lines)" if submit else ""))
    elif spec.target == "skypilot":
        command = skypilot.launch_command(spec, path)
        if not submit:
            typer.echo(f"start: {command}")
            return
        _sky_submit(spec, folder / main, command)
    else:
        build = f"docker build -f {folder / 'Dockerfile'} -t {docker.image(spec)} ."
        if not submit:
            typer.echo(f"build: {build}")
            typer.echo(f"run: sh {path}")
            return
        if shutil.which("docker") is None:
            raise EnvironmentProblem("--submit: docker is not on PATH", f"the files are written in {folder}",
                                     f"install Docker, then: {build} && sh {path}")
        for argv in (build.split(), ["sh", path]):
            if subprocess.run(argv).returncode != 0:
                raise RunFailure(f"{' '.join(argv)} failed", "its output is above", "fix that and run it again")


def _sky_submit(spec: Any, path: Path, command: str) -> None:
    """SkyPilot's Python API where it imports, else its CLI, else say how to get it."""
    from llmkit.errors import EnvironmentProblem, RunFailure

    try:
        import sky  # type: ignore[import-not-found]
    except ImportError:
        sky = None
    if sky is not None:
        task = sky.Task.from_yaml(str(path))
        secrets = {n: os.environ[n] for n in task.secrets if n in os.environ}
        task.update_secrets(secrets)
        if spec.what == "serve":
            request = sky.serve.up(task, service_name=spec.job_name)
        elif spec.spot:
            request = sky.jobs.launch(task, name=spec.job_name)
        else:
            request = sky.launch(task, cluster_name=spec.job_name)
        typer.echo(f"submitted to SkyPilot: request {request}; follow it with `sky api logs {request}`")
        return
    if shutil.which("sky") is not None:
        if subprocess.run(command.split()).returncode != 0:
            raise RunFailure(f"{command} failed", "SkyPilot's output is above", "fix that and run it again")
        return
    raise EnvironmentProblem("--submit: SkyPilot is not installed", f"the files are written in {path.parent}",
                             "install SkyPilot in its own environment (pipx install 'skypilot[aws]'; it pins click "
                             f"below 8.2, which llmkit's huggingface-hub refuses), then run: {command}")
