"""The run manifest: the environment a run was made in, written as `manifest.json`.

It records package versions, the torch build, the hardware, the git commit of the working
directory, a hash of the resolved config and fingerprints of the data files. It never records
environment variable values, so no secret can reach it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmkit.version import __version__
from llmkit.config.schema import RunConfig
from llmkit.doctor.probes import Context, requirements
from llmkit.doctor.sources import CommandTimeout, Sources
from llmkit.fsutil import atomic_write_text
from llmkit.rundir import RunDir



def packages() -> list[str]:
    """The distributions a manifest records: llmkit, torch, and what llmkit requires or offers as extras."""
    try:
        required, extras = requirements()
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return ["llmkit", "torch"]
    optional = (d for name, dists in extras.items() if name not in ("test", "all") for d in dists)
    return list(dict.fromkeys(["llmkit", "torch", *required, *optional]))


def config_hash(config: RunConfig) -> str:
    """sha256 of the config's canonical JSON: equal configs, equal hashes."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_fingerprint(path: Path, chunk_bytes: int = 1 << 20) -> dict[str, Any]:
    """Size and sha256 of one file, read in chunks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def data_fingerprints(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Fingerprints of files, and of every file under directories, in sorted order."""
    out = []
    for p in map(Path, paths):
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        out += [file_fingerprint(f) for f in files]
    return out


def _git(src: Sources, cwd: Path) -> dict[str, Any] | None:
    try:
        head = src.run(["git", "-C", str(cwd), "rev-parse", "HEAD"], 5.0)
        if head.returncode != 0:
            return None
        status = src.run(["git", "-C", str(cwd), "status", "--porcelain"], 5.0)
    except (FileNotFoundError, CommandTimeout):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def build_manifest(
    config: RunConfig,
    data_files: Iterable[str | os.PathLike[str]] = (),
    sources: Sources | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """The manifest as a dict (see module docstring)."""
    src = sources or Sources()
    ctx = Context(src, config, Path(config.runs_root) / config.name, network=False)
    plat = src.platform()
    torch = ctx.torch
    cpu_model = None
    try:
        for line in src.read_text("/proc/cpuinfo").splitlines():
            if line.lower().startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "llmkit_version": __version__,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": ".".join(map(str, plat.python)),
        "platform": {"system": plat.system, "machine": plat.machine, "release": plat.release},
        "packages": {name: src.dist_version(name) for name in packages()},
        "torch": None if torch is None else {
            "version": torch.version, "cuda": torch.cuda, "hip": torch.hip,
            "cuda_available": torch.cuda_available, "device_count": torch.device_count,
        },
        "hardware": {
            "cpu": cpu_model,
            "cores": plat.cpu_count,
            "memory_bytes": plat.memory_bytes,
            "gpus": [
                {"name": g.name, "memory_mib": g.memory_mib, "compute_capability": g.compute_capability}
                for g in ctx.gpu.gpus
            ],
            "driver_cuda": ctx.gpu.driver_cuda,
        },
        "git": _git(src, cwd or Path.cwd()),
        "config_sha256": config_hash(config),
        "privacy": {"pii": config.privacy.pii, "offline": config.privacy.offline,
                    "encryption": _encryption(config.privacy.encryption_key_env),
                    "dp": config.privacy.dp.model_dump() if config.privacy.dp.enabled else None},
        "data": data_fingerprints(data_files),
        "hub": _hub(config),
    }


def _hub(config: RunConfig) -> dict[str, Any]:
    """Hub models and tokenizers of the run and the commits they resolved to (reproducibility)."""
    from llmkit.hub import manifest_entries

    tok = config.tokenizer
    tokenizer_ref = (tok.path or config.model.from_pretrained) if tok.kind == "pretrained" else None
    return manifest_entries(config.model.from_pretrained, tokenizer_ref)


def write_manifest(
    run_dir: str | os.PathLike[str],
    config: RunConfig,
    data_files: Iterable[str | os.PathLike[str]] = (),
    sources: Sources | None = None,
) -> Path:
    """Write `manifest.json` into ``run_dir`` atomically; returns its path."""
    path = RunDir(Path(run_dir)).manifest
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(config, data_files, sources)
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def _encryption(key_env: str | None) -> dict[str, Any] | None:
    """What the manifest says of encryption at rest: the algorithm, the variable's name and the key
    id (a hash that names the key and reveals nothing of it)."""
    if not key_env:
        return None
    from llmkit.errors import LlmkitError
    from llmkit.privacy.crypto import key_from_env

    try:
        key_id: str | None = key_from_env(key_env).id_hex
    except LlmkitError:
        key_id = None
    return {"algorithm": "AES-256-GCM", "key_env": key_env, "key_id": key_id}
