"""Doctor's probes: one function per check, each returning findings with a fix.

A probe reads facts only through :class:`~llmkit.doctor.sources.Sources`, so tests feed it
recorded outputs. Facts several probes need (the GPUs, torch) are gathered once per run by
:class:`Context`.
"""

from __future__ import annotations

import importlib.metadata
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmkit.config.schema import RunConfig
from llmkit.device import cpu_flags, cpu_has_fast_bf16
from llmkit.doctor import gpu as gpulib
from llmkit.doctor.finding import Finding
from llmkit.doctor.sources import CommandTimeout, Sources, TorchInfo

GIB = 1024**3
MIN_TORCH = (2, 6)
CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class GpuFacts:
    """What `nvidia-smi` said, gathered once per doctor run."""

    gpus: list[gpulib.GpuInfo]
    driver_cuda: str | None
    p2p: dict[tuple[int, int], str]
    problem: str | None = None  # why nvidia-smi gave nothing usable (None: absent or fine)


class Context:
    """Inputs of one doctor run, with facts shared by several probes gathered once."""

    def __init__(self, sources: Sources, config: RunConfig | None, run_dir: Path, network: bool):
        self.sources, self.config, self.run_dir, self.network = sources, config, run_dir, network
        self._lock = threading.Lock()
        self._gpu: GpuFacts | None = None
        self._torch: tuple[TorchInfo | None] | None = None

    @property
    def gpu(self) -> GpuFacts:
        with self._lock:
            if self._gpu is None:
                self._gpu = _gather_gpus(self.sources)
            return self._gpu

    @property
    def torch(self) -> TorchInfo | None:
        with self._lock:
            if self._torch is None:
                self._torch = (self.sources.torch_info(),)
            return self._torch[0]

    def torch_install(self) -> str:
        """The pip command for the torch build that fits this machine."""
        p = self.sources.platform()
        return gpulib.torch_install_command(p.system, p.machine, self.gpu.driver_cuda)


def _gather_gpus(src: Sources) -> GpuFacts:
    try:
        query = src.run(gpulib.QUERY_ARGS, 10.0)
    except FileNotFoundError:
        return GpuFacts([], None, {})
    except CommandTimeout as exc:
        return GpuFacts([], None, {}, problem=str(exc))
    if query.returncode != 0:
        return GpuFacts([], None, {}, problem=(query.stderr or query.stdout).strip()[:300])
    gpus = gpulib.parse_gpu_query(query.stdout)
    driver_cuda, p2p = None, {}
    try:
        driver_cuda = gpulib.parse_driver_cuda(src.run(["nvidia-smi"], 10.0).stdout)
        if len(gpus) > 1:
            p2p = gpulib.parse_p2p(src.run(gpulib.P2P_ARGS, 10.0).stdout)
    except (FileNotFoundError, CommandTimeout):
        pass
    if driver_cuda is None and gpus:
        driver_cuda = gpulib.driver_cuda_from_table(gpus[0].driver_version)
    return GpuFacts(gpus, driver_cuda, p2p)


# --- probes --------------------------------------------------------------------------------


def probe_platform(ctx: Context) -> list[Finding]:
    p = ctx.sources.platform()
    facts = {"system": p.system, "machine": p.machine, "release": p.release}
    if p.system == "Windows":
        return [Finding(id="platform", status="warn", facts=facts,
                        summary=f"Windows {p.release} ({p.machine}): multi-GPU (NCCL) is unavailable",
                        fix="use WSL2 or Linux for multi-GPU training")]
    return [Finding(id="platform", status="ok", summary=f"{p.system} {p.release} ({p.machine})",
                    facts=facts)]


def probe_python(ctx: Context) -> list[Finding]:
    v = ctx.sources.platform().python
    text = ".".join(map(str, v))
    if v[:2] < (3, 10):
        return [Finding(id="python", status="fail", summary=f"Python {text} is too old",
                        detail="llmkit needs Python 3.10 or newer.",
                        fix="install Python >= 3.10 and create a new virtualenv with it")]
    return [Finding(id="python", status="ok", summary=f"Python {text}")]


def cpu_verdict(cpuinfo: str, cores: int, memory_bytes: int | None) -> Finding:
    """CPU model and ISA features -> the precision `train.precision: auto` picks on this CPU."""
    model = re.search(r"^(?:model name|Model Name|Hardware)\s*:\s*(.+)$", cpuinfo, re.M)
    flags = cpu_flags(cpuinfo)
    bf16 = cpu_has_fast_bf16(flags)  # the same decision `train.precision: auto` makes
    name = model.group(1).strip() if model else "unknown CPU"
    shown = [f for f in CPU_FLAGS_SHOWN if f in flags] or (["bf16"] if "bf16" in flags else [])
    mem = f", {memory_bytes / GIB:.0f} GiB RAM" if memory_bytes else ""
    facts = {"model": name, "cores": cores, "memory_bytes": memory_bytes,
             "precision": "bf16" if bf16 else "fp32", **{f: f in flags for f in CPU_FLAGS_SHOWN}}
    head = f"{name}, {cores} cores{mem}; {' '.join(shown) or 'no AVX2/AVX-512'}"
    if bf16:
        return Finding(id="cpu", status="ok", facts=facts,
                       summary=f"{head} -> CPU training uses bf16 (bf16 weights with fp32 masters in one "
                               "process; bf16 autocast for LoRA, several processes)")
    return Finding(id="cpu", status="ok", facts=facts,
                   summary=f"{head} -> CPU training uses fp32 (no native bf16)",
                   detail="avx512_bf16 or AMX would make bf16 autocast about twice as fast as fp32.")


def probe_cpu(ctx: Context) -> list[Finding]:
    p = ctx.sources.platform()
    try:
        info = ctx.sources.read_text("/proc/cpuinfo")
    except OSError as exc:
        return [Finding(id="cpu", status="warn", facts={"cores": p.cpu_count},
                        summary=f"{p.cpu_count} cores; CPU features unknown ({exc.strerror or exc})",
                        detail="without /proc/cpuinfo llmkit cannot see AVX-512/AMX support.",
                        fix="set train.precision explicitly (fp32 is always safe on CPU)")]
    return [cpu_verdict(info, p.cpu_count, p.memory_bytes)]


def probe_torch(ctx: Context) -> list[Finding]:
    info, install = ctx.torch, ctx.torch_install()
    if info is None:
        return [Finding(id="torch", status="fail", summary="torch is not installed",
                        detail="llmkit trains, evaluates and serves with PyTorch.", fix=install)]
    if info.import_error:
        return [Finding(id="torch", status="fail", summary=f"torch {info.version} fails to import",
                        detail=info.import_error, fix=f"pip uninstall -y torch && {install}")]
    facts = {"version": info.version, "cuda": info.cuda, "hip": info.hip, "mps": info.mps_available}
    if gpulib.version_tuple(info.version)[:2] < MIN_TORCH:
        return [Finding(id="torch", status="fail", facts=facts,
                        summary=f"torch {info.version} is older than 2.6",
                        detail="before 2.6, torch.load(weights_only=True) can still run code from a "
                        "crafted file (CVE-2025-32434); llmkit refuses to load .bin/.pt files with it.",
                        fix=f"pip install -U 'torch>=2.6' (for this machine: {install})")]
    build = (f"ROCm {info.hip}" if info.hip else f"CUDA {info.cuda}" if info.cuda
             else "MPS" if info.mps_available else "CPU")
    return [Finding(id="torch", status="ok", facts=facts,
                    summary=f"torch {info.version} ({build} build)")]


def probe_gpus(ctx: Context) -> list[Finding]:
    g = ctx.gpu
    if g.problem:
        return [Finding(id="gpu", status="warn", summary="nvidia-smi did not work", detail=g.problem,
                        fix="check the NVIDIA driver (`nvidia-smi` should list the GPUs)")]
    if not g.gpus:
        t = ctx.torch
        if t is not None and t.mps_available:
            return [Finding(id="gpu", status="ok", summary="Apple GPU (MPS) available")]
        return [Finding(id="gpu", status="skip", summary="no NVIDIA GPU found: training runs on the CPU")]
    return [gpulib.gpu_finding(x) for x in g.gpus]


def probe_cuda(ctx: Context) -> list[Finding]:
    g, t = ctx.gpu, ctx.torch
    if not g.gpus:
        return [Finding(id="cuda", status="skip", summary="no NVIDIA GPU")]
    if t is None or t.import_error:
        return [Finding(id="cuda", status="skip", summary="torch not importable (see torch)")]
    return [gpulib.cuda_compat_finding(t.cuda, g.gpus[0].driver_version, g.driver_cuda,
                                       ctx.torch_install())]


def probe_multi_gpu(ctx: Context) -> list[Finding]:
    t = ctx.torch
    return [gpulib.multi_gpu_finding(ctx.gpu.gpus, ctx.gpu.p2p, bool(t and t.nccl_available))]


def checkpoint_bytes(config: RunConfig) -> int:
    """Bytes of one checkpoint: the trained weights and AdamW's two moments, fp32 (LoRA: the adapters
    alone; the frozen base is not saved)."""
    from llmkit.planning.params import trainable_parameters

    return 12 * trainable_parameters(config)


def disk_verdict(run_dir: Path, free: int, needed: int | None) -> Finding:
    """Free disk at the run directory vs what the config's checkpoints will take."""
    facts = {"path": str(run_dir), "free_bytes": free, "needed_bytes": needed}
    if needed is None:
        status = "ok" if free >= 10 * GIB else "warn"
        return Finding(id="disk", status=status, facts=facts,
                       summary=f"{free / GIB:.1f} GiB free at {run_dir}",
                       fix="" if status == "ok" else "free disk space (pass --config for the exact need)")
    if free < needed:
        return Finding(id="disk", status="fail", facts=facts,
                       summary=f"{free / GIB:.1f} GiB free at {run_dir}; checkpoints need "
                       f"{needed / GIB:.1f} GiB",
                       detail="keep_last committed checkpoints + one being written + final/.",
                       fix="free space, point runs_root at a larger disk, or lower train.keep_last")
    return Finding(id="disk", status="ok", facts=facts,
                   summary=f"{free / GIB:.1f} GiB free at {run_dir} (checkpoints need "
                   f"{needed / GIB:.2f} GiB)")


def probe_disk(ctx: Context) -> list[Finding]:
    needed = None
    if ctx.config is not None:
        # keep_last committed + one in flight, plus the final model (weights only)
        one = checkpoint_bytes(ctx.config)
        needed = one * (ctx.config.train.keep_last + 1) + one // 3
    try:
        ctx.sources.check_writable(str(ctx.run_dir))
    except OSError as exc:
        return [Finding(id="disk", status="fail", facts={"path": str(ctx.run_dir)},
                        summary=f"cannot write to {ctx.run_dir}: {exc.strerror or exc}",
                        detail="runs write their checkpoints and outputs there.",
                        fix="choose a writable runs_root (e.g. --set runs_root=$HOME/runs)")]
    try:
        free = ctx.sources.disk_free(str(ctx.run_dir))
    except OSError as exc:
        return [Finding(id="disk", status="warn", summary=f"cannot measure free disk: {exc}",
                        fix="check the path with `df -h`")]
    return [disk_verdict(ctx.run_dir, free, needed)]


def probe_shm(ctx: Context) -> list[Finding]:
    size = ctx.sources.shm_bytes()
    if size is None:
        return [Finding(id="shm", status="skip", summary="no /dev/shm on this system")]
    if size < GIB:
        return [Finding(id="shm", status="warn", facts={"shm_bytes": size},
                        summary=f"/dev/shm is only {size / 2**20:.0f} MiB",
                        detail="data loader workers and NCCL pass tensors through shared memory; "
                        "containers default to 64 MiB, which crashes them with 'bus error'.",
                        fix="docker: --shm-size=8g (or --ipc=host); Kubernetes: an emptyDir with "
                        "medium: Memory mounted at /dev/shm")]
    return [Finding(id="shm", status="ok", summary=f"/dev/shm {size / GIB:.1f} GiB",
                    facts={"shm_bytes": size})]


_REQUIREMENT = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(?:>=\s*([0-9][^,;\s]*))?")
_EXTRA = re.compile(r"extra\s*==\s*['\"]([\w-]+)['\"]")


def requirements() -> tuple[dict[str, str], dict[str, list[str]]]:
    """From llmkit's installed metadata (pyproject.toml, the one list): the required distributions
    with their minimum versions, and each extra's distributions. torch is left to its own probe."""
    required: dict[str, str] = {}
    extras: dict[str, list[str]] = {}
    for req in importlib.metadata.requires("llmkit") or []:
        m = _REQUIREMENT.match(req)
        if m is None or m.group(1) in ("llmkit", "torch"):
            continue
        extra = _EXTRA.search(req)
        if extra:
            extras.setdefault(extra.group(1), []).append(m.group(1))
        else:
            required[m.group(1)] = m.group(2) or "0"
    return required, extras


def needed_extras(config: RunConfig | None) -> set[str]:
    """Extras a config's features need."""
    if config is None:
        return set()
    need = set()
    if config.model.lora.enabled:
        need.add("qlora" if config.model.lora.base_bits in (4, 8) else "lora")
    if config.train.optimizer != "adamw":
        need.add("qlora")  # bitsandbytes' 8-bit AdamW
    need.update(config.train.trackers)  # tensorboard, wandb, mlflow: each its extra
    if config.eval.harness_tasks:
        need.add("eval")
    return need


def probe_packages(ctx: Context) -> list[Finding]:
    ver = ctx.sources.dist_version
    try:
        required, extras = requirements()
    except importlib.metadata.PackageNotFoundError:
        return [Finding(id="packages", status="warn", summary="llmkit's package metadata is missing",
                        detail="the list of required packages comes from the installed llmkit distribution",
                        fix="pip install -e . (from a checkout) or pip install llmkit")]
    bad = []
    for dist, minimum in required.items():
        have = ver(dist)
        if have is None or gpulib.version_tuple(have) < gpulib.version_tuple(minimum):
            bad.append((dist, minimum, have))
    findings = []
    if bad:
        listing = ", ".join(f"{d} {h or 'missing'} (need >= {m})" for d, m, h in bad)
        cmd = "pip install " + " ".join(f"'{d}>={m}'" for d, m, _ in bad)
        findings.append(Finding(id="packages", status="fail", summary=f"required packages: {listing}",
                                fix=cmd))
    else:
        findings.append(Finding(id="packages", status="ok", summary="required packages present"))
    usable = sorted(e for e, dists in extras.items() if e != "all" and all(ver(d) for d in dists))
    missing = sorted(e for e in extras if e != "all" and e not in usable)
    needed = needed_extras(ctx.config) & set(missing)
    facts = {e: e in usable for e in extras if e != "all"}
    status = "fail" if needed else "ok"
    summary = f"extras usable: {', '.join(usable) or 'none'}; not installed: {', '.join(missing) or 'none'}"
    fix = f"pip install 'llmkit[{','.join(sorted(needed))}]'" if needed else ""
    detail = f"the config needs: {', '.join(sorted(needed))}" if needed else ""
    findings.append(Finding(id="extras", status=status, summary=summary, detail=detail, fix=fix,
                            facts=facts))
    return findings


def probe_hub(ctx: Context) -> list[Finding]:
    env = ctx.sources.environ
    names = [n for n in dict.fromkeys([ctx.config.hub_token_env if ctx.config else None,
                                       "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]) if n]
    present = [n for n in names if env.get(n)]
    offline = env.get("HF_HUB_OFFLINE", "") not in ("", "0")
    token = (f"token in ${present[0]} (value not shown)" if present
             else f"no token (${names[0]} unset): public models only")
    facts = {"token_env": present[0] if present else None, "offline": offline}
    if offline:
        return [Finding(id="hub", status="ok", facts=facts,
                        summary=f"HF_HUB_OFFLINE is set: local models only; {token}")]
    if not ctx.network:
        return [Finding(id="hub", status="ok", facts=facts,
                        summary=f"{token}; reachability not tested (pass --network)")]
    try:
        ctx.sources.connect("huggingface.co", 443, 3.0)
    except OSError as exc:
        return [Finding(id="hub", status="warn", facts={**facts, "reachable": False},
                        summary=f"Hugging Face hub not reachable ({exc}); {token}",
                        fix="use local model directories, or set HF_HUB_OFFLINE=1 to stop retries")]
    return [Finding(id="hub", status="ok", facts={**facts, "reachable": True},
                    summary=f"Hugging Face hub reachable; {token}")]


def probe_privacy(ctx: Context) -> list[Finding]:
    """privacy.offline and privacy.pii of the config (skip without one)."""
    from llmkit.privacy.offline import OFFLINE_ENV, missing

    if ctx.config is None:
        return [Finding(id="privacy", status="skip", summary="no config given (pass --config to see its privacy settings)")]
    from llmkit.errors import LlmkitError
    from llmkit.privacy.crypto import key_from_env

    p = ctx.config.privacy
    pii = f"PII in prepare: {p.pii}" + (f" (phone regions {', '.join(p.phone_regions)})" if p.pii != "off" else "")
    enc, enc_problem = "encryption at rest: off", None
    if p.encryption_key_env:
        try:
            key = key_from_env(p.encryption_key_env, ctx.sources.environ)
            enc = f"encryption at rest: on (AES-256-GCM, key id {key.id_hex} in ${p.encryption_key_env})"
        except LlmkitError as exc:
            enc, enc_problem = f"encryption at rest: on, but {exc.summary}", exc.fix
    pii = f"{pii}; {enc}"
    facts: dict[str, object] = {"offline": p.offline, "pii": p.pii, "encryption_key_env": p.encryption_key_env,
                                "dp": p.dp.enabled}
    if p.dp.enabled:
        import importlib.util

        pii += "; differential privacy: DP-SGD " + (f"to epsilon {p.dp.target_epsilon}" if p.dp.target_epsilon
                                                     else f"with noise multiplier {p.dp.noise_multiplier}")
        if importlib.util.find_spec("opacus") is None:
            enc_problem = "pip install 'llmkit[privacy]' (privacy.dp trains with Opacus, which is not installed)"
            pii += ", but Opacus is not installed"
    if enc_problem:
        return [Finding(id="privacy", status="fail", summary=f"offline: {'on' if p.offline else 'off'}; {pii}",
                        facts=facts, fix=enc_problem)]
    if not p.offline:
        return [Finding(id="privacy", status="ok", summary=f"offline: off; {pii}", facts=facts)]
    lacking = missing(ctx.sources.environ)
    facts |= {"switches": ", ".join(sorted(OFFLINE_ENV)), "missing": ", ".join(lacking)}
    if lacking:
        return [Finding(id="privacy", status="warn", facts=facts, summary=f"offline: on, but {', '.join(lacking)} unset "
                        f"here; {pii}", fix="llmkit sets them itself for every stage it runs; export them for "
                        "other tools you run on this data")]
    return [Finding(id="privacy", status="ok", facts=facts,
                    summary=f"offline: on (Hugging Face offline, telemetry off, loopback serving only); {pii}")]


PROBES: dict[str, Callable[[Context], list[Finding]]] = {
    "platform": probe_platform,
    "python": probe_python,
    "cpu": probe_cpu,
    "torch": probe_torch,
    "gpu": probe_gpus,
    "cuda": probe_cuda,
    "multi_gpu": probe_multi_gpu,
    "disk": probe_disk,
    "shm": probe_shm,
    "packages": probe_packages,
    "hub": probe_hub,
    "privacy": probe_privacy,
}
"""Every probe, in report order."""
