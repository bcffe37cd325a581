"""`llmkit launch`: the same run rendered for Slurm, Kubernetes, SkyPilot and Docker.

``spec.build_spec`` decides and checks; each target module's ``render(spec)`` is a pure function
returning {file name: text}.
"""

from __future__ import annotations

from llmkit.launch import docker, kubernetes, skypilot, slurm
from llmkit.launch.spec import LaunchSpec

RENDERERS = {"slurm": slurm.render, "kubernetes": kubernetes.render, "skypilot": skypilot.render,
             "docker": docker.render}


def render(spec: LaunchSpec) -> dict[str, str]:
    """Every file of the launch: the target's own and run.yaml, the config the job reads."""
    return {**RENDERERS[spec.target](spec), "run.yaml": spec.config_yaml}
