"""Renderers are pure functions of the config: golden files for every target, and the bad inputs of
`llmkit launch` refused with the fix.

Regenerate the golden files after an intended change with LLMKIT_UPDATE_GOLDEN=1, and read the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from llmkit.config.load import ConfigProblems, validate_config
from llmkit.errors import ConfigError
from llmkit.launching.entry import render
from llmkit.launching.spec import LaunchSpec, build_spec

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "launch"
PINS = ("torch==2.13.0", "llmkit==0.1.0", "transformers==5.24.0", "tokenizers==0.23.3")

MODEL = {"architecture": "llama", "hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
         "num_key_value_heads": 4, "max_position_embeddings": 1024}
TRAIN = {"sequence_length_tokens": 1024, "global_batch_size": 64, "micro_batch_size": 4, "max_steps": 2000}

CASES: dict[str, dict[str, Any]] = {
    # two 8-GPU nodes on spot instances, checkpoints in a bucket, a day's limit
    "multinode-bucket": {"launch": {"nodes": 2, "accelerator": "H100:8", "cloud": "aws", "region": "us-east-1",
                                    "spot": True, "image": "ghcr.io/acme/llmkit-run:1",
                                    "checkpoint_uri": "s3://acme-ckpt/llmkit", "time_limit_s": 86400,
                                    "secret_envs": ["HF_TOKEN", "WANDB_API_KEY"]},
                         "serve": {"api_key_env": "LLMKIT_API_KEY"}},
    # Kubernetes with a volume claim, two nodes of 4 A100s
    "multinode-volume": {"launch": {"nodes": 2, "devices_per_node": 4, "accelerator": "A100-80GB",
                                    "image": "registry.local/llmkit:1", "checkpoint_uri": "pvc://llmkit-runs",
                                    "max_restarts": 2}, "serve": {"api_key_env": "LLMKIT_API_KEY"}},
    # one CPU machine: Docker, or a one-node Slurm job with runs_root on the shared home
    "cpu-single": {"launch": {"devices_per_node": 2, "secret_envs": []},
                   "serve": {"api_key_env": "LLMKIT_API_KEY", "port": 8080}},
}
TARGETS = {"multinode-bucket": ("slurm", "kubernetes", "skypilot"), "multinode-volume": ("kubernetes",),
           "cpu-single": ("slurm", "docker", "skypilot")}


def config(**sections: Any) -> Any:
    data: dict[str, Any] = {"name": "demo", "model": MODEL, "train": TRAIN}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return validate_config(data)


def spec_for(case: str, target: str, what: str) -> LaunchSpec:
    cfg = config(**CASES[case])
    return build_spec(cfg, target, what, PINS, "the run's manifest", "3.11", f"launch/{target}/run.yaml", "0.1.0")


def _params() -> list[tuple[str, str, str]]:
    return [(case, target, what) for case, targets in TARGETS.items() for target in targets
            for what in ("train", "serve")]


@pytest.mark.parametrize(("case", "target", "what"), _params())
def test_golden(case: str, target: str, what: str) -> None:
    files = render(spec_for(case, target, what))
    folder = GOLDEN / case / target / what
    if os.environ.get("LLMKIT_UPDATE_GOLDEN"):
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)
    assert sorted(files) == sorted(p.name for p in folder.iterdir())
    for name, text in files.items():
        assert text == (folder / name).read_text(), f"{folder / name} differs (LLMKIT_UPDATE_GOLDEN=1 rewrites it)"


def test_same_config_same_files() -> None:
    assert render(spec_for("multinode-bucket", "kubernetes", "train")) == \
        render(spec_for("multinode-bucket", "kubernetes", "train"))


def test_secret_values_never_reach_the_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETVALUE0123456789abcdef")
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-value-42")
    for target in TARGETS["multinode-bucket"]:
        for what in ("train", "serve"):
            text = "".join(render(spec_for("multinode-bucket", target, what)).values())
            assert "SECRETVALUE" not in text and "wandb-secret" not in text
            assert "HF_TOKEN" in text


@pytest.mark.parametrize("target", ["slurm", "kubernetes", "skypilot", "docker"])
def test_the_encryption_key_goes_by_reference_only(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    key = "q9Zk3v0Yp2b8WmT1xN4sL6dR7cF5hJ0aE2gU8iO3yKw="
    monkeypatch.setenv("RUN_KEY", key)
    cfg = config(privacy={"encryption_key_env": "RUN_KEY"}, serve={"api_key_env": "K"},  # sealed runs: one process
                 launch={"nodes": 1, "devices_per_node": 1, "checkpoint_uri": "s3://bucket/runs",
                         "image": "registry.example/llmkit:1"})
    for what in ("train", "serve"):
        files = render(build_spec(cfg, target, what, PINS, "x", "3.11", "l/run.yaml", "0.1.0"))
        text = "".join(files.values())
        assert key not in text and "RUN_KEY" in text
        if target == "kubernetes":
            assert "name: RUN_KEY" in text and "secretKeyRef" in text
        if target == "docker":  # the model is decrypted into /dev/shm: Docker's 64 MB default is too small
            assert "--shm-size 16g" in text


# bad input ------------------------------------------------------------------------------------

def _refused(target: str, match: str, what: str = "train", **launch: Any) -> str:
    cfg = config(launch=launch, serve={"api_key_env": "K"})
    with pytest.raises(ConfigError) as err:
        build_spec(cfg, target, what, PINS, "x", "3.11", "l/run.yaml", "0.1.0")
    text = err.value.render()
    assert match in text, text
    return text


def test_more_devices_than_an_instance_has() -> None:
    text = _refused("skypilot", "more than one machine has", accelerator="H100", devices_per_node=16)
    assert "instances have 1, 8 x H100-80GB" in text and "nodes: 2" in text
    _refused("skypilot", "instances on gcp have 1 x A100-80GB", accelerator="A100-80GB:8", cloud="gcp")


def test_unknown_accelerator_suggests_close_matches() -> None:
    text = _refused("slurm", "is not a GPU llmkit plan knows", accelerator="H1OO:8")
    assert "H100-80GB" in text


@pytest.mark.parametrize("target", ["slurm", "kubernetes", "skypilot"])
def test_node_local_checkpoints_refused_for_multinode(target: str) -> None:
    image = {"image": "x:1"} if target == "kubernetes" else {}
    text = _refused(target, "fix:", nodes=2, accelerator="H100:8", checkpoint_uri="/tmp/ckpt", **image)
    assert "step 0" in text and "launch.checkpoint_uri" in text


def test_no_durable_place_for_a_spot_or_multinode_cloud_run() -> None:
    _refused("skypilot", "a spot skypilot run has nowhere durable", accelerator="L4", spot=True)
    _refused("kubernetes", "a multi-node kubernetes run has nowhere durable", nodes=2, image="x:1")
    _refused("skypilot", "SkyPilot instances share no folder", checkpoint_uri="/shared/ckpt")
    _refused("slurm", "Slurm mounts no volume claims", checkpoint_uri="pvc://runs")


def test_other_refusals() -> None:
    _refused("kubernetes", "launch.image is not set")
    _refused("docker", "a docker run is one machine", nodes=2)
    _refused("skypilot", "launch.region us-east-1 needs a cloud", region="us-east-1")
    cfg = config(launch={})
    with pytest.raises(ConfigError, match="needs an API key"):
        build_spec(cfg, "kubernetes", "serve", PINS, "x", "3.11", "l/run.yaml", "0.1.0")


@pytest.mark.parametrize("value", ["hf_AbCdEfGhIjKlMnOpQrStUv12", "ghp_0123456789abcdefghijABCD", "AKIAABCDEFGHIJKLMNOP",
                                   "sk-proj-abc123", "my token"])
def test_secret_given_as_value_is_refused(value: str) -> None:
    with pytest.raises(ConfigProblems, match="launch.secret_envs") as err:
        validate_config({"name": "x", "launch": {"secret_envs": ["HF_TOKEN", value]}})
    assert value not in str(err.value)  # the value is not echoed back either


def test_accelerator_count_given_twice_must_agree() -> None:
    assert validate_config({"name": "x", "launch": {"accelerator": "H100:4"}}).launch.devices_per_node == 4
    with pytest.raises(ConfigProblems, match="give the count once"):
        validate_config({"name": "x", "launch": {"accelerator": "H100:4", "devices_per_node": 8}})


def test_ranks_that_cannot_split_the_global_batch_are_refused_for_training_only() -> None:
    batch = config().train.global_batch_size
    ranks = next(n for n in (3, 5, 6, 7, 9, 10, 12) if batch % n)
    text = _refused("slurm", f"cannot split a global batch of {batch}", nodes=1, accelerator=f"H100:{ranks}",
                    devices_per_node=ranks, checkpoint_uri="s3://b/ck")
    assert "multiple of the rank count" in text
    cfg = config(launch={"nodes": 1, "accelerator": f"H100:{ranks}", "devices_per_node": ranks}, serve={"api_key_env": "K"})
    assert build_spec(cfg, "slurm", "serve", PINS, "x", "3.11", "l/run.yaml", "0.1.0").what == "serve"
