"""What every renderer needs, decided once: resources, checkpoint place, grace, pins, estimate.

``build_spec`` checks the config against the target (the bad inputs of `llmkit launch`) and
returns a frozen ``LaunchSpec``; the renderers (``slurm``, ``kubernetes``, ``skypilot``,
``docker``) are pure functions of it. Nothing here imports torch.
"""

from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import yaml

from llmkit.config.schema import RunConfig
from llmkit.errors import ConfigError, UsageError
from llmkit.planning.hardware import Device, find_device, offerings

if TYPE_CHECKING:
    from llmkit.launching.base import Target

WHATS = ("train", "serve")
RDZV_PORT = 29400
BUCKET_SCHEMES = ("s3://", "gs://", "gcs://", "az://", "abfs://", "r2://")
MOUNT = "/llmkit-checkpoints"  # where SkyPilot mounts the checkpoint bucket
VOLUME_ROOT = "/runs"  # where Kubernetes mounts the checkpoint volume claim (as runs_root)
# Paths that are one machine's own disk: checkpoints there do not outlive the node.
NODE_LOCAL = re.compile(r"^(/tmp|/var/tmp|/dev/shm|/run|/scratch/local|/local|/mnt/local|/localscratch)(/|$)")
BUCKET_GB_S = 0.5  # upload rate assumed per node when checkpoints go to a bucket
DISK_GB_S = 1.0  # write rate assumed per node on a shared file system or volume


@dataclass(frozen=True)
class Estimate:
    """``llmkit plan``'s row for the launched resources."""

    device: str
    num_devices: int
    fits: bool
    micro_batch: int | None
    hours: float | None
    cost_usd: float | None
    offering: str | None
    step_s: float | None
    own_hardware: bool = False
    """The machines are the user's own (no rented cloud instances, so no list price)."""


@dataclass(frozen=True)
class Checkpoints:
    """Where checkpoints outlive a node: ``bucket`` (a URL), ``volume`` (a claim), ``shared`` (a
    folder every node sees, used as runs_root) or ``local`` (runs_root as it is)."""

    kind: str
    where: str | None = None

    @property
    def claim(self) -> str | None:
        return self.where if self.kind == "volume" else None


@dataclass(frozen=True)
class LaunchSpec:
    name: str
    what: str
    target: str
    nodes: int
    per_node: int
    device: Device | None  # None: CPU
    cloud: str
    region: str | None
    spot: bool
    image: str | None
    checkpoints: Checkpoints
    max_restarts: int
    time_limit_s: int | None
    grace_s: int
    secret_envs: tuple[str, ...]
    config_yaml: str  # the config the job runs (runs_root / checkpoint_uri set for the target)
    config_path: str  # where the job reads it (Slurm, Docker: relative to the submit folder)
    runs_root: str
    python: str  # "3.11"
    pins: tuple[str, ...]  # "name==version", llmkit and torch first
    pins_from: str
    llmkit_version: str
    serve_port: int
    api_key_env: str | None
    drain_timeout_s: float
    estimate: Estimate | None
    notes: tuple[str, ...] = field(default=())
    encrypted: bool = False
    """privacy.encryption_key_env is set: models are decrypted into /dev/shm for loads."""

    @property
    def gpu(self) -> bool:
        return self.device is not None

    @property
    def job_name(self) -> str:
        """A name every engine accepts (DNS-1123 label: lowercase, digits, '-')."""
        slug = re.sub(r"[^a-z0-9-]+", "-", self.name.lower()).strip("-") or "run"
        return f"llmkit-{slug}"[:52].rstrip("-") + ("-serve" if self.what == "serve" else "")

    @property
    def out(self) -> str:
        """The folder the files are written to (where config_path lies)."""
        return posixpath.dirname(self.config_path) or "."

    @property
    def run_dir(self) -> str:
        return f"{self.runs_root.rstrip('/')}/{self.name}"

    def train_args(self, node_rank: str | None, head: str) -> list[str]:
        """`llmkit train` under torchrun's agent, as every target runs it (shell words, unquoted).
        ``node_rank`` None: the caller appends --node-rank itself."""
        args = ["llmkit", "train", "--config", self.config_path, "--resume", "auto",
                "--nproc-per-node", str(self.per_node)]
        if self.nodes > 1:
            args += ["--nnodes", str(self.nodes), "--rdzv-endpoint", head]
            args += ["--node-rank", node_rank] if node_rank is not None else []
        return args + ["--max-restarts", str(self.max_restarts), "--stop-timeout", str(self.grace_s)]

    def serve_args(self, model: str | None = None) -> list[str]:
        return ["llmkit", "serve", model or self.run_dir, "--config", self.config_path, "--host", "0.0.0.0",
                "--port", str(self.serve_port)]

    @property
    def llmkit_pin(self) -> str:
        return next((p for p in self.pins if p.startswith("llmkit==")), f"llmkit=={self.llmkit_version}")

    def pip_install(self) -> str:
        """The pinned install: torch first (its local label such as +cpu dropped on GPU targets), then
        llmkit from $LLMKIT_PIP_SPEC (default: the pinned version from your index) and the rest."""
        pins = [p.split("+")[0] if self.gpu and p.startswith("torch==") else p for p in self.pins]
        torch = [p for p in pins if p.startswith("torch==")] or ["torch"]
        rest = [_quote(p) for p in pins if not p.startswith(("torch==", "llmkit=="))]
        return f"pip install {' '.join(torch)} && pip install \"$LLMKIT_PIP_SPEC\" {' '.join(rest)}".rstrip()


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[A-Za-z0-9_.=:/+-]+", word) else "'" + word.replace("'", "'\\''") + "'"


def shell_words(words: list[str]) -> str:
    """Words joined for a shell; words holding "$" are double-quoted so the shell expands them."""
    return " ".join(f'"{w}"' if "$" in w else _quote(w) for w in words)


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (scripts, the embedded config); no anchors or aliases."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _block(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _block)


def dump_yaml(docs: list[dict[str, object]]) -> str:
    """Documents as YAML for people to read: keys in the order given, scripts as blocks."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def parse_accelerator(text: str | None) -> Device | None:
    """The plan's device for launch.accelerator (H100, H100:8, A100-80GB); unknown names list close ones."""
    if text is None:
        return None
    try:
        return find_device(text.split(":")[0])
    except UsageError as exc:
        raise ConfigError(f"launch.accelerator {text!r} is not a GPU llmkit plan knows", exc.detail,
                          "use one of the names listed (the count per node goes in devices_per_node or after ':')"
                          ) from None


def target_of(name: str) -> Target:
    """The registered launch target ``name`` (``llmkit.registry.LAUNCH_TARGETS``)."""
    from llmkit.registry import LAUNCH_TARGETS, load

    target: Target = load(LAUNCH_TARGETS, name, "launch target", "TARGET")
    return target


def checkpoint_place(cfg: RunConfig, target: str, what: str) -> Checkpoints:
    """Classify launch.checkpoint_uri and refuse places that do not outlive the node for this run."""
    t = target_of(target)
    lc = cfg.launch
    uri = lc.checkpoint_uri
    multi = lc.nodes > 1
    if uri is None:
        kind, where = "local", cfg.runs_root
    elif uri.startswith(BUCKET_SCHEMES):
        kind, where = "bucket", uri.rstrip("/")
    elif uri.startswith("pvc://"):
        claim = uri[len("pvc://"):].strip("/")
        if not t.volumes:
            raise ConfigError(f"launch.checkpoint_uri {uri} is a Kubernetes volume claim but the target is {target}",
                              f"{t.title} mounts no volume claims",
                              "use a bucket (s3://, gs://, az://) or, on Slurm, a shared folder")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", claim):
            raise ConfigError(f"launch.checkpoint_uri {uri}: {claim!r} is not a volume claim name",
                              "claim names are lowercase letters, digits and '-'", "write pvc://<claim-name>")
        kind, where = "volume", claim
    elif "://" in uri:
        raise ConfigError(f"launch.checkpoint_uri {uri}: scheme not supported",
                          f"supported: {', '.join(BUCKET_SCHEMES)}, pvc:// (Kubernetes) or a shared folder",
                          "use a bucket URL, pvc://CLAIM or an absolute shared path")
    else:
        kind, where = "shared", uri.rstrip("/") or "/"
    path = where if kind in ("local", "shared") else None
    why = "a multi-node" if multi else "a spot" if lc.spot else None
    if path is not None and NODE_LOCAL.match(path) and why:
        raise ConfigError(f"checkpoints would go to {path}, a node's own disk, in {why} run",
                          "another node, or the machine that replaces a preempted one, cannot read them, so "
                          "the run would restart from step 0",
                          "set launch.checkpoint_uri to a bucket (s3://bucket/prefix) or a folder every node "
                          "mounts (e.g. on NFS or Lustre)")
    if t.ephemeral_disks and kind in ("local", "shared") and (why is not None) and what == "train":
        fix = ("a bucket (s3://bucket/prefix) or pvc://CLAIM (a ReadWriteMany volume claim)" if t.volumes
               else f"a bucket (s3://, gs:// or az://); {t.title} mounts it on every node")
        raise ConfigError(f"{why} {target} run has nowhere durable for checkpoints",
                          f"{'the pods' if t.volumes else 'the instances'}' disks go away with them, "
                          "so a restarted or preempted run would begin again at step 0",
                          f"set launch.checkpoint_uri to {fix}")
    if not t.shared_folders and kind == "shared":
        raise ConfigError(f"launch.checkpoint_uri {uri} is a folder; {t.title} instances share no folder",
                          "each instance has its own disk", "use a bucket URL (s3://, gs://, az://)")
    return Checkpoints(kind, where)


def job_config(cfg: RunConfig, target: str, ck: Checkpoints) -> RunConfig:
    """The run config as the job runs it: runs_root and train.checkpoint_uri set for the target."""
    runs_root = cfg.runs_root
    uri = cfg.train.checkpoint_uri
    if ck.kind == "shared":
        runs_root = ck.where or runs_root
    elif ck.kind == "volume":
        runs_root = VOLUME_ROOT
    elif ck.kind == "bucket":
        # SkyPilot mounts the bucket and llmkit commits there as to a folder; elsewhere fsspec writes to it
        mount = target_of(target).bucket_mount
        uri = f"{mount}/{cfg.name}" if mount else f"{ck.where}/{cfg.name}"
    train = cfg.train.model_copy(update={"checkpoint_uri": uri})
    launch = cfg.launch.model_copy(update={"target": target})
    return cfg.model_copy(update={"runs_root": runs_root, "train": train, "launch": launch})


def check_devices(cfg: RunConfig, device: Device | None, target: str) -> None:
    """Refuse more GPUs per node than any instance of that GPU has (in the chosen cloud)."""
    lc = cfg.launch
    if device is None:
        return
    cloud = lc.cloud if target_of(target).clouds else "any"
    sizes = sorted({o.count for o in offerings() if o.device == device.name and cloud in ("any", o.cloud)})
    largest = max(sizes, default=8)
    if lc.devices_per_node > largest:
        where = f" on {cloud}" if cloud != "any" else ""
        listed = f"instances{where} have {', '.join(map(str, sizes))}" if sizes else "no listed machine has more than 8"
        raise ConfigError(f"{lc.devices_per_node} x {device.name} per node is more than one machine has",
                          f"{listed} x {device.name}",
                          f"set launch.devices_per_node to at most {largest} and raise launch.nodes instead "
                          f"(e.g. nodes: {math.ceil(lc.nodes * lc.devices_per_node / largest)})")


def grace_seconds(cfg: RunConfig, step_s: float | None, ck: Checkpoints) -> int:
    """Seconds a stop signal must come before the kill: finish the step, write (and upload) a checkpoint.

    One step (from the plan; 60 s when unknown) plus one checkpoint of weights and AdamW moments
    (``doctor``'s size) at 1 GB/s to disk or 0.5 GB/s to a bucket per node, times 1.5, plus 30 s,
    rounded up to 10 s.
    """
    from llmkit.doctor.probes import checkpoint_bytes

    per_node = checkpoint_bytes(cfg) / max(1, cfg.launch.nodes) / 1e9
    write = per_node / (BUCKET_GB_S if ck.kind == "bucket" else DISK_GB_S)
    total = 1.5 * ((step_s if step_s is not None else 60.0) + write) + 30
    return int(math.ceil(total / 10) * 10)


def estimate(cfg: RunConfig, device: Device | None, target: str = "skypilot") -> Estimate | None:
    """``llmkit plan``'s candidate for exactly these resources (make_plan, one device, one count).
    Cost only where the run rents cloud instances (SkyPilot on a cloud); elsewhere the hardware is yours."""
    if device is None:
        return None
    from llmkit.planning.recommend import make_plan, total_tokens

    lc = cfg.launch
    n = lc.nodes * lc.devices_per_node
    cloud = "any" if lc.cloud == "kubernetes" else lc.cloud  # own cluster: no list price, see below
    plan = make_plan(cfg, [device.name], cloud, lc.spot, counts=(n,), sharding=cfg.plan.sharding)
    c = plan.candidates[0]
    own = lc.cloud == "kubernetes" or not target_of(target).clouds
    if own:
        c.cost_usd, c.offering = None, None
    steps = math.ceil(total_tokens(cfg) / (cfg.train.global_batch_size * cfg.train.sequence_length_tokens))
    step_s = c.hours * 3600 / steps if c.hours is not None and steps else None
    return Estimate(c.device, c.num_devices, c.fits, c.micro_batch, c.hours, c.cost_usd, c.offering, step_s, own)


def build_spec(cfg: RunConfig, target: str, what: str, pins: tuple[str, ...], pins_from: str, python: str,
               config_path: str, llmkit_version: str) -> LaunchSpec:
    """Check the config for this target and decide everything the renderers print."""
    from llmkit.config.load import dump_config

    t = target_of(target)
    lc = cfg.launch
    notes: list[str] = []
    device = parse_accelerator(lc.accelerator)
    check_devices(cfg, device, target)
    if not t.multi_node and lc.nodes > 1:
        several = [n for n in _registered() if target_of(n).multi_node]
        raise ConfigError(f"launch.nodes is {lc.nodes} but a {target} run is one machine",
                          f"{target} starts its job on the host it runs on",
                          f"use --target {' or '.join(several)} for several nodes (or set launch.nodes: 1)")
    if what == "serve" and lc.nodes > 1:
        notes.append("serve runs one replica on one node; launch.nodes applies to training")
    if what == "serve" and cfg.serve.api_key_env is None and not cfg.serve.allow_unauthenticated:
        raise ConfigError("serving on a cluster needs an API key",
                          "the server binds 0.0.0.0 there, and llmkit refuses that without a key",
                          "set serve.api_key_env to the name of the variable that will hold the key "
                          "(or serve.allow_unauthenticated: true behind your own gateway)")
    ck = checkpoint_place(cfg, target, what)
    notes += t.check(cfg, what, ck)
    if t.ephemeral_disks and ck.kind == "local" and what == "train":
        notes.append("checkpoints stay on the instance's own disk: set launch.checkpoint_uri to keep them if it goes")
    if not t.clouds:
        ignored = [k for k in ("cloud", "region", "spot") if k in lc.model_fields_set
                   and getattr(lc, k) != type(lc).model_fields[k].get_default()]
        if ignored:
            notes.append(f"launch.{', launch.'.join(ignored)}: SkyPilot settings, not used by --target {target}")
    ranks = lc.nodes * lc.devices_per_node
    if what == "train" and cfg.train.global_batch_size % ranks:
        raise ConfigError(f"{lc.nodes} node(s) x {lc.devices_per_node} device(s) = {ranks} ranks cannot split a global "
                          f"batch of {cfg.train.global_batch_size} sequences",
                          "each data-parallel rank needs a whole share of the global batch; llmkit train would "
                          "refuse it on the cluster, after the wait for nodes",
                          "set train.global_batch_size to a multiple of the rank count (re-tune the learning rate), "
                          "or change launch.nodes / launch.devices_per_node")
    est = estimate(cfg, device, target) if what == "train" or cfg.train.global_batch_size % ranks == 0 else None
    if est is not None and not est.fits:
        notes.append(f"the plan says this run does NOT fit {est.num_devices} x {est.device}; "
                     "see `llmkit plan` for what would")
    job = job_config(cfg, target, ck)
    return LaunchSpec(
        name=cfg.name, what=what, target=target, nodes=lc.nodes if what == "train" else 1,
        per_node=lc.devices_per_node if what == "train" else 1, device=device, cloud=lc.cloud, region=lc.region, spot=lc.spot,
        image=lc.image, checkpoints=ck, max_restarts=lc.max_restarts, time_limit_s=lc.time_limit_s,
        grace_s=grace_seconds(cfg, est.step_s if est else None, ck), secret_envs=_secrets(cfg),
        config_yaml=dump_config(job), config_path=config_path, runs_root=job.runs_root, python=python,
        pins=pins, pins_from=pins_from, llmkit_version=llmkit_version, serve_port=cfg.serve.port,
        api_key_env=cfg.serve.api_key_env, drain_timeout_s=cfg.serve.drain_timeout_s, estimate=est,
        notes=tuple(notes), encrypted=cfg.privacy.encryption_key_env is not None)


def _registered() -> list[str]:
    from llmkit.registry import LAUNCH_TARGETS

    return list(LAUNCH_TARGETS)


def _secrets(cfg: RunConfig) -> tuple[str, ...]:
    """launch.secret_envs plus the encryption key's variable (privacy.encryption_key_env): each
    passed to the job by reference (a Secret, an exported variable), never written into a file."""
    names = list(cfg.launch.secret_envs)
    if cfg.privacy.encryption_key_env:
        names.append(cfg.privacy.encryption_key_env)
    return tuple(dict.fromkeys(names))
