"""Slurm: one sbatch script (pure function of the spec).

One task per node runs `llmkit train` under torchrun's agent; the rendezvous is on the first node
of the allocation (its NodeAddr), at a port derived from the job id so jobs sharing a node do
not collide. `--signal=TERM@grace` makes Slurm signal the tasks `grace` seconds before the time
limit: llmkit finishes the step, checkpoints and exits 143, and the script requeues the job,
which resumes with `--resume auto`. A requeue by preemption or `scontrol requeue` resumes the
same way. The log of every attempt of a job is appended to one file.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from llmkit.errors import EnvironmentProblem, RunFailure
from llmkit.launching.base import Echo, Target, main_file
from llmkit.launching.spec import RDZV_PORT, LaunchSpec, shell_words


def _time(seconds: int) -> str:
    minutes = -(-seconds // 60)
    return f"{minutes // 1440}-{minutes // 60 % 24:02d}:{minutes % 60:02d}:00"


def render(spec: LaunchSpec) -> dict[str, str]:
    name = f"{spec.what}.sbatch"
    lines = ["#!/bin/bash",
             f"# llmkit launch {spec.llmkit_version}: run '{spec.name}' ({spec.what}) on Slurm.",
             f"# Submit from the folder you ran `llmkit launch` in (paths are relative to it): sbatch {spec.out}/{name}",
             "# llmkit must be on PATH in the submitting shell (sbatch passes its environment on).",
             f"#SBATCH --job-name={spec.job_name}",
             f"#SBATCH --nodes={spec.nodes}",
             "#SBATCH --ntasks-per-node=1"]
    if spec.gpu:
        lines.append(f"#SBATCH --gpus-per-node={spec.per_node}")
    if spec.time_limit_s:
        lines.append(f"#SBATCH --time={_time(spec.time_limit_s)}")
        if spec.what == "train":
            lines.append(f"#SBATCH --signal=TERM@{spec.grace_s}")
    if spec.what == "train":
        lines += ["#SBATCH --requeue", "#SBATCH --open-mode=append"]
    lines += [f"#SBATCH --output={spec.job_name}-%j.log", "", "set -uo pipefail",
              "# secrets: passed through from the submitting environment by name, never written here"]
    for env in spec.secret_envs:
        lines.append(f'[ -n "${{{env}:-}}" ] || echo "llmkit: {env} is not set in the submitting environment" >&2')
    if spec.what == "serve":
        if spec.api_key_env:
            lines.append(f'[ -n "${{{spec.api_key_env}:-}}" ] || {{ echo "llmkit: export {spec.api_key_env} '
                         f'(the API key) before sbatch" >&2; exit 2; }}')
        lines += ["", "exec srun --nodes=1 --ntasks=1 " + shell_words(spec.serve_args())]
        return {name: "\n".join(lines) + "\n"}
    head = "$head_addr:$port"
    train = shell_words(spec.train_args(None, head))
    lines += [
        "",
        "# the rendezvous: the first node of the allocation, a port per job",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'head_addr=$(scontrol show node "$head_node" -o | tr " " "\\n" | sed -n "s/^NodeAddr=//p")',
        f"port=$(( {RDZV_PORT} + SLURM_JOB_ID % 1000 ))",
        'export head_addr port',
        'echo "llmkit: job $SLURM_JOB_ID attempt ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST, '
        'rendezvous $head_addr:$port"',
        "",
        "# one task per node; each starts torchrun's agent with its node rank",
        f"srun --kill-on-bad-exit=1 bash -c 'exec \"$@\" --node-rank \"$SLURM_NODEID\"' node {train}"
        if spec.nodes > 1 else f"srun --kill-on-bad-exit=1 {train}",
        "code=$?",
        "if [ \"$code\" -eq 143 ]; then",
        '  echo "llmkit: stopped before the time limit with a checkpoint; requeueing job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$code"',
    ]
    return {name: "\n".join(lines) + "\n"}


class Slurm(Target):
    """An sbatch script: one task per node, torchrun's agent in each, checkpoints on a shared folder
    or a bucket."""

    name = "slurm"
    title = "Slurm"

    def render(self, spec: LaunchSpec) -> dict[str, str]:
        return render(spec)

    def submit(self, spec: LaunchSpec, folder: Path, files: dict[str, str], submit: bool, echo: Echo) -> None:
        path = (folder / main_file(files)).as_posix()
        if not submit:
            echo(f"submit: sbatch {path}")
            return
        if shutil.which("sbatch") is None:
            raise EnvironmentProblem("--submit: sbatch is not on PATH", f"the files are written in {folder}",
                                     f"run on a Slurm login node: sbatch {path}")
        done = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True)
        if done.returncode != 0:
            raise RunFailure("sbatch refused the job", done.stderr.strip()[-500:], f"fix that, then: sbatch {path}")
        echo(f"submitted job {done.stdout.strip().split(';')[0]}")


TARGET = Slurm()
