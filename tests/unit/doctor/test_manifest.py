"""The run manifest: environment, config hash, data fingerprints; never a secret."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from llmkit.config.schema import RunConfig
from llmkit.doctor.manifest import config_hash, write_manifest
from llmkit.doctor.sources import Sources


def test_manifest_contents_and_no_secrets(tmp_path: Path, monkeypatch) -> None:
    secret = "hf_TOPSECRETtokenVALUE42"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("MY_API_KEY", secret)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c", "user.name=t",
                    "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "train.bin"
    data.write_bytes(b"\x01\x02" * 1000)
    cfg = RunConfig.model_validate({"name": "m", "serve": {"api_key_env": "MY_API_KEY"}})
    path = write_manifest(tmp_path / "runs" / "m", cfg, [data], Sources())
    text = path.read_text()
    assert secret not in text
    m = json.loads(text)
    assert m["config_sha256"] == config_hash(cfg)
    assert m["data"][0]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert m["data"][0]["bytes"] == 2000
    assert len(m["git"]["commit"]) == 40 and m["git"]["dirty"] is True  # train.bin is untracked
    assert m["torch"]["version"].startswith("2.")
    assert m["packages"]["pydantic"] and m["hardware"]["cores"] >= 1


def test_config_hash_changes_with_config() -> None:
    a = RunConfig(name="a")
    assert config_hash(a) == config_hash(RunConfig(name="a"))
    assert config_hash(a) != config_hash(RunConfig.model_validate({"name": "a", "train": {"max_steps": 2}}))
