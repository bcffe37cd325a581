"""What a launch target is: a name, the facts ``spec.build_spec`` needs about its machines, a
check of the config against them, a renderer and a way to start the job. Each target module
(``slurm``, ``kubernetes``, ``skypilot``, ``docker``) sets ``TARGET``; ``llmkit.registry``
names them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from llmkit.config.schema import RunConfig
    from llmkit.launching.spec import Checkpoints, LaunchSpec

Echo = Callable[[str], None]


class Target:
    """A launch target. Subclasses set the class attributes and implement ``render`` and
    ``submit``; ``check`` refuses what the target cannot run."""

    name: ClassVar[str]
    title: ClassVar[str]
    """The engine's own spelling, for messages (SkyPilot)."""
    multi_node: ClassVar[bool] = True
    """Whether one job spans several machines (Docker: one host)."""
    clouds: ClassVar[bool] = False
    """Whether it rents cloud instances and reads launch.cloud, region and spot (their prices count)."""
    volumes: ClassVar[bool] = False
    """Whether it mounts volume claims (pvc://CLAIM as launch.checkpoint_uri)."""
    ephemeral_disks: ClassVar[bool] = False
    """Whether a node's disk goes away with it (pods, cloud instances)."""
    shared_folders: ClassVar[bool] = True
    """Whether its nodes can share a folder (NFS, Lustre) for checkpoints."""
    bucket_mount: ClassVar[str | None] = None
    """Where it mounts a checkpoint bucket on every node (None: llmkit writes to the bucket itself)."""

    def check(self, cfg: RunConfig, what: str, checkpoints: Checkpoints) -> list[str]:
        """Raise a ConfigError for what this target cannot run; return notes for the user."""
        return []

    def render(self, spec: LaunchSpec) -> dict[str, str]:
        """{file name: text}: a pure function of the spec (run.yaml is added by the caller)."""
        raise NotImplementedError

    def submit(self, spec: LaunchSpec, folder: Path, files: dict[str, str], submit: bool, echo: Echo) -> None:
        """Print how to start the job, or start it (``submit``)."""
        raise NotImplementedError


def main_file(files: dict[str, str]) -> str:
    """The file a target starts the job with (not run.yaml, not the Dockerfile)."""
    return next(n for n in files if n != "run.yaml" and not n.startswith("Dockerfile"))
