"""`llmkit launch` through the real CLI, its files checked by the engines' own tools.

- Kubernetes: `kubernetes-validate --strict` (bundled schemas, offline) accepts every manifest.
- SkyPilot: `sky.Task.from_yaml` accepts every task and service. SkyPilot pins click below 8.2 and
  transformers 5's huggingface-hub needs 8.4, so it lives in its own virtualenv (`.venv-sky`, made
  by `.ci/run`; or LLMKIT_SKYPILOT_PYTHON). The rendered `run:` script is executed with SkyPilot's
  variables set and a stand-in `llmkit` on PATH that records what it was asked to do.
- Slurm: `bash -n` on the script (the real cluster runs it in test_slurm.py).
- The time and cost `llmkit launch` prints are `llmkit plan`'s for the same resources.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
MODEL = {"architecture": "llama", "hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
         "num_key_value_heads": 4, "max_position_embeddings": 1024}
TRAIN = {"sequence_length_tokens": 1024, "global_batch_size": 192, "micro_batch_size": 4, "max_steps": 2000}
CONFIGS: dict[str, dict[str, Any]] = {
    "spot-bucket": {"nodes": 2, "accelerator": "H100:8", "cloud": "aws", "region": "us-east-1", "spot": True,
                    "image": "ghcr.io/acme/llmkit:1", "checkpoint_uri": "s3://acme/ckpt", "time_limit_s": 7200},
    "volume": {"nodes": 3, "accelerator": "A100-80GB:4", "image": "registry.local/llmkit:1",
               "checkpoint_uri": "pvc://llmkit-runs"},
    "k8s-cloud": {"accelerator": "L4", "cloud": "kubernetes", "image": "llmkit:1"},
    "cpu": {"devices_per_node": 2, "secret_envs": []},
}


def llmkit(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=120)


def write_config(folder: Path, name: str, launch: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "model": MODEL, "train": TRAIN, "launch": launch,
                                    "serve": {"api_key_env": "LLMKIT_API_KEY"}}))
    return path


def launch(folder: Path, name: str, target: str, what: str) -> dict[str, Path]:
    out = folder / "out" / name / target / what
    done = llmkit(folder, "launch", "--config", f"{name}.yaml", "--target", target, "--what", what, "--out",
                  str(out.relative_to(folder)))
    assert done.returncode == 0, done.stdout + done.stderr
    return {p.name: p for p in out.iterdir()}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], dict[str, Path]]:
    folder = tmp_path_factory.mktemp("launch")
    for name, section in CONFIGS.items():
        write_config(folder, name, section)
    out = {}
    for name in CONFIGS:
        for target in ("kubernetes", "skypilot", "slurm") if name != "cpu" else ("skypilot", "slurm", "docker"):
            if name == "spot-bucket" or target == "kubernetes" or name == "cpu":
                for what in ("train", "serve"):
                    out[(name, target, what)] = launch(folder, name, target, what)
    return out


def test_kubernetes_validate_strict(rendered: dict[tuple[str, str, str], dict[str, Path]]) -> None:
    tool = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or \
        shutil.which("kubernetes-validate")
    assert tool, "kubernetes-validate is in the test extra"
    files = [str(f) for (_, target, _), fs in rendered.items() if target == "kubernetes"
             for n, f in fs.items() if n.endswith(".yaml") and n != "run.yaml"]
    assert len(files) == 6
    done = subprocess.run([tool, "--strict", *files], capture_output=True, text=True, timeout=300)
    print(done.stdout[-2000:])
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = [d["kind"] for f in files for d in yaml.safe_load_all(Path(f).read_text())]
    assert kinds.count("Job") == 3 and kinds.count("Deployment") == 3


def test_kubernetes_indexed_job_is_one_pod_per_node(rendered: dict[tuple[str, str, str], dict[str, Path]]) -> None:
    docs = list(yaml.safe_load_all(rendered[("volume", "kubernetes", "train")]["train.yaml"].read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    svc = next(d for d in docs if d["kind"] == "Service")
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 3
    assert svc["spec"]["clusterIP"] == "None" and pod["subdomain"] == svc["metadata"]["name"]
    args = c["args"]
    assert args[args.index("--node-rank") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert args[args.index("--rdzv-endpoint") + 1] == f"{job['metadata']['name']}-0.{svc['metadata']['name']}:29400"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4 and args[args.index("--nproc-per-node") + 1] == "4"
    assert pod["volumes"][-1] == {"name": "runs", "persistentVolumeClaim": {"claimName": "llmkit-runs"}}
    assert pod["terminationGracePeriodSeconds"] > int(args[args.index("--stop-timeout") + 1])
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["run.yaml"])
    assert config["runs_root"] == "/runs"


def _sky_python() -> str | None:
    found = os.environ.get("LLMKIT_SKYPILOT_PYTHON") or str(REPO / ".venv-sky" / "bin" / "python")
    return found if Path(found).exists() else None


def test_skypilot_accepts_every_task_and_service(rendered: dict[tuple[str, str, str], dict[str, Path]]) -> None:
    python = _sky_python()
    if python is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide SkyPilot in .venv-sky (see .ci/run)")
        pytest.skip("no SkyPilot virtualenv (.venv-sky or LLMKIT_SKYPILOT_PYTHON)")
    files = [str(f) for (_, target, _), fs in rendered.items() if target == "skypilot"
             for n, f in fs.items() if n.endswith(".sky.yaml")]
    assert len(files) == 4
    check = ("import json, sys, sky\n"
             "out = []\n"
             "for path in sys.argv[1:]:\n"
             "    t = sky.Task.from_yaml(path)\n"
             "    r = list(t.resources)[0]\n"
             "    out.append({'path': path, 'nodes': t.num_nodes, 'accelerators': r.accelerators,\n"
             "                'spot': r.use_spot, 'cloud': str(r.cloud) if r.cloud else None,\n"
             "                'region': r.region, 'service': t.service is not None,\n"
             "                'mounts': sorted(t.storage_mounts or {}) + sorted(t.file_mounts or {}),\n"
             "                'secrets': sorted([*t.secrets, *(m.name for m in t._managed_secret_refs)])})\n"
             "print(json.dumps(out))\n")
    done = subprocess.run([python, "-c", check, *files], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = {Path(r["path"]).parent.parent.parent.name + "/" + Path(r["path"]).parent.name: r
            for r in json.loads(done.stdout.strip().splitlines()[-1])}
    train = seen["spot-bucket/train"]
    assert train["nodes"] == 2 and train["accelerators"] == {"H100": 8} and train["spot"]
    assert train["cloud"] == "AWS" and train["region"] == "us-east-1"
    assert "/llmkit-checkpoints" in train["mounts"] and train["secrets"] == ["HF_TOKEN"]
    assert seen["spot-bucket/serve"]["service"] and "LLMKIT_API_KEY" in seen["spot-bucket/serve"]["secrets"]
    assert seen["cpu/train"]["accelerators"] is None
    print(json.dumps(seen, indent=1))


def _run_script(path: Path, rank: int, tmp: Path) -> list[str]:
    """Run a rendered SkyPilot `run:` as SkyPilot would on node ``rank``, with a stand-in llmkit."""
    bin_dir = tmp / f"bin{rank}"
    bin_dir.mkdir()
    record = tmp / f"args{rank}.json"
    stand_in = bin_dir / "llmkit"
    stand_in.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    stand_in.chmod(0o755)
    task = yaml.safe_load(path.read_text())
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp), "SKYPILOT_NODE_RANK": str(rank),
           "SKYPILOT_NODE_IPS": "127.0.0.11\n127.0.0.12", "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NUM_GPUS_PER_NODE": "8"}
    done = subprocess.run(["bash", "-c", task["run"]], capture_output=True, text=True, env=env, cwd=tmp, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(record.read_text())


def test_skypilot_run_script_starts_each_node_with_its_rank(rendered: dict[tuple[str, str, str], dict[str, Path]],
                                                            tmp_path: Path) -> None:
    path = rendered[("spot-bucket", "skypilot", "train")]["train.sky.yaml"]
    for rank in (0, 1):
        args = _run_script(path, rank, tmp_path)
        assert args[:2] == ["train", "--config"] and args[2] == f"{tmp_path}/.llmkit/run.yaml"
        opts = dict(zip(args[3::2], args[4::2]))
        assert opts["--node-rank"] == str(rank) and opts["--nnodes"] == "2" and opts["--nproc-per-node"] == "8"
        assert opts["--rdzv-endpoint"] == "127.0.0.11:29400"  # the first node of SKYPILOT_NODE_IPS
        assert opts["--resume"] == "auto"
    # setup wrote the config the job reads: checkpoints go to the mounted bucket
    task = yaml.safe_load(path.read_text())
    setup = subprocess.run(["bash", "-c", task["setup"].replace("pip install", "true pip install")],
                           capture_output=True, text=True, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path),
                                                                **task.get("envs", {})}, timeout=60)
    assert setup.returncode == 0, setup.stderr
    job = yaml.safe_load((tmp_path / ".llmkit" / "run.yaml").read_text())
    assert job["train"]["checkpoint_uri"] == "/llmkit-checkpoints/spot-bucket"
    assert job["name"] == "spot-bucket" and job["model"] == {**job["model"], **MODEL}


def test_slurm_scripts_parse(rendered: dict[tuple[str, str, str], dict[str, Path]]) -> None:
    for (_, target, what), files in rendered.items():
        if target == "slurm":
            done = subprocess.run(["bash", "-n", str(files[f"{what}.sbatch"])], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr


def _plan_row(folder: Path, name: str, device: str, n: int, cloud: str, spot: bool) -> dict[str, Any]:
    done = llmkit(folder, "plan", "--config", f"{name}.yaml", "--device", device, "--devices", str(n), "--cloud",
                  cloud, "--spot" if spot else "--on-demand", "--json", "--no-this-machine")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["candidates"][0]


def test_launch_prints_the_plans_time_and_cost(tmp_path: Path) -> None:
    for spot in (True, False):
        write_config(tmp_path, "p", {"nodes": 2, "accelerator": "H100:8", "cloud": "aws", "spot": spot,
                                     "checkpoint_uri": "s3://b/c"})
        row = _plan_row(tmp_path, "p", "H100", 16, "aws", spot)
        done = llmkit(tmp_path, "launch", "--config", "p.yaml", "--target", "skypilot", "--out", f"o{spot}")
        assert done.returncode == 0, done.stderr
        line = next(x for x in done.stdout.splitlines() if x.startswith("plan:"))
        print(line)
        assert f"{row['hours']:.2f} h" in line and f"${row['cost_usd']:,.0f} ({row['offering']})" in line
        assert "16 x H100-80GB" in line
    # on Slurm the hardware is the user's: the same hours, no price
    done = llmkit(tmp_path, "launch", "--config", "p.yaml", "--target", "slurm", "--out", "os")
    line = next(x for x in done.stdout.splitlines() if x.startswith("plan:"))
    assert f"{row['hours']:.2f} h" in line and "no list price" in line


def test_out_folder_with_other_files_needs_overwrite(tmp_path: Path) -> None:
    write_config(tmp_path, "o", CONFIGS["cpu"])
    assert llmkit(tmp_path, "launch", "--config", "o.yaml", "--target", "slurm", "--out", "x").returncode == 0
    again = llmkit(tmp_path, "launch", "--config", "o.yaml", "--target", "slurm", "--out", "x")
    assert again.returncode == 0  # the same files: nothing to refuse
    before = {p.name: p.read_text() for p in (tmp_path / "x").iterdir()}
    other = llmkit(tmp_path, "launch", "--config", "o.yaml", "--target", "slurm", "--out", "x", "--set",
                   "launch.devices_per_node=4")
    assert other.returncode == 2 and "already holds other launch files" in other.stderr and "--overwrite" in other.stderr
    assert {p.name: p.read_text() for p in (tmp_path / "x").iterdir()} == before  # nothing was touched
    forced = llmkit(tmp_path, "launch", "--config", "o.yaml", "--target", "slurm", "--out", "x", "--set",
                    "launch.devices_per_node=4", "--overwrite")
    assert forced.returncode == 0 and "--nproc-per-node 4" in (tmp_path / "x" / "train.sbatch").read_text()


def test_submit_without_the_engine_says_so_and_keeps_the_files(tmp_path: Path) -> None:
    write_config(tmp_path, "s", CONFIGS["cpu"])
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    env = {"PATH": str(bare)}  # no sbatch, no sky, no docker
    for target, tool in (("slurm", "sbatch"), ("skypilot", "SkyPilot"), ("docker", "docker")):
        done = llmkit(tmp_path, "launch", "--config", "s.yaml", "--target", target, "--out", target, "--submit",
                      env=env)
        assert done.returncode == 3, done.stdout + done.stderr
        assert tool in done.stderr and "the files are written in" in done.stderr
        assert (tmp_path / target / "run.yaml").exists()
    k8s = llmkit(tmp_path, "launch", "--config", "s.yaml", "--target", "kubernetes", "--out", "k", "--submit",
                 "--set", "launch.image=llmkit:1")
    assert k8s.returncode == 0 and "kubectl apply -f k/train.yaml" in k8s.stdout
