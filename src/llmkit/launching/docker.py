"""A Dockerfile for the run and the `docker run` lines for train and serve (pure functions of the spec).

The image: the run's Python (slim Debian base), torch and llmkit's dependencies at the versions the
run's manifest recorded, and the project folder copied to /work (so the same image runs on
Kubernetes, where nothing is mounted). PyPI's torch wheels for Linux carry the CUDA runtime, so one
base serves CPU and GPU; a GPU host needs only the driver and the NVIDIA container toolkit
(`--gpus all`). For a smaller CPU image pass `--build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel
index>`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from llmkit.errors import EnvironmentProblem, RunFailure
from llmkit.launching.base import Echo, Target, main_file
from llmkit.launching.spec import LaunchSpec, shell_words

WORKDIR = "/work"


def image(spec: LaunchSpec) -> str:
    return spec.image or f"{spec.job_name.removesuffix('-serve')}:latest"


def dockerfile(spec: LaunchSpec) -> str:
    torch = [p for p in spec.pins if p.startswith("torch==")]
    rest = [p for p in spec.pins if not p.startswith(("torch==", "llmkit=="))]
    if spec.gpu:
        torch = [p.split("+")[0] for p in torch]
    lines = [f"# llmkit launch {spec.llmkit_version}: the image for run '{spec.name}'. Build from the folder you ran",
             f"# `llmkit launch` in: docker build -f {spec.out}/Dockerfile -t {image(spec)} .",
             f"# Versions: {spec.pins_from}.",
             f"FROM python:{spec.python}-slim",
             "ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
             "ARG TORCH_INDEX_URL=",
             "RUN pip install ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL} " + " ".join(torch or ["torch"]),
             "# llmkit itself: the pinned version from your index, or --build-arg LLMKIT_PIP_SPEC=<wheel, git URL>",
             f"ARG LLMKIT_PIP_SPEC={spec.llmkit_pin}",
             'RUN pip install "$LLMKIT_PIP_SPEC"' + "".join(f" {p}" for p in rest)]
    lines += [f"WORKDIR {WORKDIR}", f"COPY . {WORKDIR}",
              "# an unprivileged user owns the working folder (runs, checkpoints)",
              f"RUN useradd --create-home --uid 1000 llmkit && chown -R llmkit {WORKDIR}",
              "USER llmkit",
              'CMD ["llmkit", "--help"]']
    return "\n".join(lines) + "\n"


def dockerignore() -> str:
    return "\n".join([".git", ".venv*", "**/__pycache__", "**/checkpoints", "**/*.log", ""])


def run_line(spec: LaunchSpec) -> str:
    """`docker run` for this spec's `what`: the project folder mounted at /work so runs persist."""
    words = ["docker", "run", "--rm", "--init"]
    if spec.gpu:
        words += ["--gpus", "all", "--shm-size", "16g"]
    elif spec.encrypted:  # an encrypted run's model is decrypted into /dev/shm (64 MB by default in Docker)
        words += ["--shm-size", "16g"]
    words += ["--user", "$(id -u):$(id -g)", "-v", "$PWD:/work", "-w", WORKDIR]
    secrets = list(dict.fromkeys((*spec.secret_envs, *([spec.api_key_env] if spec.what == "serve"
                                                        and spec.api_key_env else []))))
    for name in secrets:
        words += ["-e", name]  # the value comes from the calling shell
    if spec.what == "train":
        words += ["--stop-timeout", str(spec.grace_s), image(spec), *spec.train_args(None, "")]
    else:
        words += ["-d", "--name", spec.job_name, "-p", f"{spec.serve_port}:{spec.serve_port}", image(spec),
                  *spec.serve_args()]
    return shell_words(words)


def render(spec: LaunchSpec) -> dict[str, str]:
    script = ["#!/bin/sh",
              f"# llmkit launch {spec.llmkit_version}: {spec.what} run '{spec.name}' in Docker, from the folder you "
              "ran `llmkit launch` in.",
              "set -eu", run_line(spec)]
    return {"Dockerfile": dockerfile(spec), "Dockerfile.dockerignore": dockerignore(),
            f"{spec.what}-docker.sh": "\n".join(script) + "\n"}


class Docker(Target):
    """A Dockerfile and a run script: the run in a container on this host."""

    name = "docker"
    title = "Docker"
    multi_node = False

    def render(self, spec: LaunchSpec) -> dict[str, str]:
        return render(spec)

    def submit(self, spec: LaunchSpec, folder: Path, files: dict[str, str], submit: bool, echo: Echo) -> None:
        path = (folder / main_file(files)).as_posix()
        build = f"docker build -f {folder / 'Dockerfile'} -t {image(spec)} ."
        if not submit:
            echo(f"build: {build}")
            echo(f"run: sh {path}")
            return
        if shutil.which("docker") is None:
            raise EnvironmentProblem("--submit: docker is not on PATH", f"the files are written in {folder}",
                                     f"install Docker, then: {build} && sh {path}")
        for argv in (build.split(), ["sh", path]):
            if subprocess.run(argv).returncode != 0:
                raise RunFailure(f"{' '.join(argv)} failed", "its output is above", "fix that and run it again")


TARGET = Docker()
