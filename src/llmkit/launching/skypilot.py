"""SkyPilot task and service YAML (pure functions of the spec).

The folder `sky launch` / `sky jobs launch` runs in is synced to every node (`workdir: .`), so the
config's relative data paths work as they do locally. A checkpoint bucket is mounted on every
node and llmkit commits checkpoints there (train.checkpoint_uri), so a managed job that is
preempted resumes from the newest one on its new instance. Secrets are declared by name and
passed with `--secret NAME` from the launching shell.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import os
import shutil
import subprocess
from pathlib import Path

from llmkit.config.schema import RunConfig
from llmkit.errors import ConfigError, EnvironmentProblem, RunFailure
from llmkit.launching.base import Echo, Target, main_file
from llmkit.launching.spec import MOUNT, RDZV_PORT, Checkpoints, LaunchSpec, dump_yaml, shell_words

CONFIG = "$HOME/.llmkit/run.yaml"
MARK = "LLMKIT_RUN_YAML"


def _resources(spec: LaunchSpec) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if spec.device is not None:  # a GPU run
        res["accelerators"] = f"{spec.device.skypilot or spec.device.name}:{spec.per_node}"
    else:
        res["cpus"] = f"{max(2, 2 * spec.per_node)}+"
    if spec.cloud != "any":
        infra = "k8s" if spec.cloud == "kubernetes" else spec.cloud
        res["infra"] = f"{infra}/{spec.region}" if spec.region else infra
    if spec.image:
        res["image_id"] = f"docker:{spec.image}"
    if spec.what == "serve":
        res["ports"] = spec.serve_port
    elif spec.spot:
        res["use_spot"] = True
        res["job_recovery"] = {"max_restarts_on_errors": spec.max_restarts}
    return res


def _setup(spec: LaunchSpec) -> str:
    lines = ["set -euo pipefail"]
    if spec.image:
        lines.append(f"# the image {spec.image} brings llmkit {spec.llmkit_version}")
    else:
        lines.append(f"# llmkit and its dependencies at the versions of {spec.pins_from}")
        lines.append(spec.pip_install())
    lines += ['mkdir -p "$HOME/.llmkit"', f'cat > "{CONFIG}" <<\'{MARK}\'', spec.config_yaml.rstrip("\n"), MARK]
    return "\n".join(lines) + "\n"


def _run(spec: LaunchSpec) -> str:
    lines = ["set -euo pipefail"]
    if spec.what == "serve":
        model = f"{MOUNT}/{spec.name}/final" if spec.checkpoints.kind == "bucket" else None
        lines.append("exec " + shell_words(spec.serve_args(model)))
        return "\n".join(lines) + "\n"
    lines += ['head=$(echo "$SKYPILOT_NODE_IPS" | head -n 1)',
              'echo "llmkit: node $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES, rendezvous $head:' + str(RDZV_PORT) + '"',
              shell_words(spec.train_args('$SKYPILOT_NODE_RANK', f"$head:{RDZV_PORT}"))]
    if spec.checkpoints.kind == "bucket":
        final = f"{spec.run_dir}/final"
        lines += [f'if [ "$SKYPILOT_NODE_RANK" = 0 ] && [ -d {final} ]; then  # for `--what serve`',
                  f"  mkdir -p {MOUNT}/{spec.name}/final && cp -r {final}/. {MOUNT}/{spec.name}/final/",
                  "fi"]
    return "\n".join(lines) + "\n"


def task(spec: LaunchSpec) -> dict[str, Any]:
    """The task (train) or service (serve) as a dict, in SkyPilot's key order."""
    doc: dict[str, Any] = {"name": spec.job_name, "workdir": ".", "resources": _resources(spec)}
    if spec.what == "train":
        doc["num_nodes"] = spec.nodes
    else:
        doc["service"] = {"readiness_probe": {"path": "/ready", "initial_delay_seconds": 120}, "replicas": 1}
    if spec.checkpoints.kind == "bucket":
        doc["file_mounts"] = {MOUNT: {"source": spec.checkpoints.where, "mode": "MOUNT"}}
    names = list(dict.fromkeys((*spec.secret_envs, *([spec.api_key_env] if spec.what == "serve"
                                                     and spec.api_key_env else []))))
    if not spec.image:  # override with --env LLMKIT_PIP_SPEC=<a wheel, a git URL, a path>
        doc["envs"] = {"LLMKIT_PIP_SPEC": spec.llmkit_pin}
    if names:
        doc["secrets"] = {n: None for n in names}
    doc["setup"] = _setup(spec)
    doc["run"] = _run(spec)
    return doc


def launch_command(spec: LaunchSpec, path: str) -> str:
    secrets = " ".join(f"--secret {n}" for n in (*spec.secret_envs, *([spec.api_key_env] if spec.what == "serve"
                                                                     and spec.api_key_env else [])))
    if spec.what == "serve":
        verb = "sky serve up"
    elif spec.spot:
        verb = "sky jobs launch"
    else:
        verb = "sky launch -c " + spec.job_name
    return f"{verb} {path} {secrets}".rstrip()


def render(spec: LaunchSpec) -> dict[str, str]:
    doc = task(replace(spec, config_path=CONFIG))  # the job reads the config its setup wrote
    name = f"{spec.what}.sky.yaml"
    header = (f"# llmkit launch {spec.llmkit_version}: run '{spec.name}' ({spec.what}) with SkyPilot.\n"
              f"# From the folder you ran `llmkit launch` in: {launch_command(spec, f'{spec.out}/{name}')}\n")
    return {name: header + dump_yaml([doc])}


class SkyPilot(Target):
    """A SkyPilot task (or service): cloud instances, spot or on demand, the checkpoint bucket
    mounted on every node."""

    name = "skypilot"
    title = "SkyPilot"
    clouds = True
    ephemeral_disks = True
    shared_folders = False
    bucket_mount = MOUNT

    def check(self, cfg: RunConfig, what: str, checkpoints: Checkpoints) -> list[str]:
        lc = cfg.launch
        if lc.region and lc.cloud in ("any", "kubernetes"):
            raise ConfigError(f"launch.region {lc.region} needs a cloud", f"launch.cloud is {lc.cloud}",
                              "set launch.cloud to aws, gcp or azure (a region belongs to one), or remove launch.region")
        return []

    def render(self, spec: LaunchSpec) -> dict[str, str]:
        return render(spec)

    def submit(self, spec: LaunchSpec, folder: Path, files: dict[str, str], submit: bool, echo: Echo) -> None:
        path = folder / main_file(files)
        command = launch_command(spec, path.as_posix())
        if not submit:
            echo(f"start: {command}")
            return
        _submit(spec, path, command, echo)


def _submit(spec: LaunchSpec, path: Path, command: str, echo: Echo) -> None:
    """SkyPilot's Python API where it imports, else its CLI, else say how to get it."""
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
        echo(f"submitted to SkyPilot: request {request}; follow it with `sky api logs {request}`")
        return
    if shutil.which("sky") is not None:
        if subprocess.run(command.split()).returncode != 0:
            raise RunFailure(f"{command} failed", "SkyPilot's output is above", "fix that and run it again")
        return
    raise EnvironmentProblem("--submit: SkyPilot is not installed", f"the files are written in {path.parent}",
                             "install SkyPilot in its own environment (pipx install 'skypilot[aws]'; it pins click "
                             f"below 8.2, which llmkit's huggingface-hub refuses), then run: {command}")


TARGET = SkyPilot()
