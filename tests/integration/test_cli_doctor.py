"""`llmkit doctor` through the real entry point, on this machine and without torch."""

from __future__ import annotations

import json
import re
from pathlib import Path


def test_doctor_on_this_machine(cli, tmp_path: Path) -> None:
    out = cli("doctor", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    cpu = next(f for f in report["findings"] if f["id"] == "cpu")
    flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    has_bf16 = flags is not None and ("avx512_bf16" in flags.group(1).split() or "amx_bf16" in flags.group(1).split())
    assert cpu["facts"]["precision"] == ("bf16" if has_bf16 else "fp32")
    torch = next(f for f in report["findings"] if f["id"] == "torch")
    assert torch["status"] == "ok"


def test_doctor_table_and_install_plan(cli, tmp_path: Path) -> None:
    out = cli("doctor", cwd=tmp_path)
    assert out.returncode == 0 and "ready" in out.stdout and "cpu" in out.stdout
    cli("init", "run.yaml", cwd=tmp_path)
    out = cli("doctor", "--config", "run.yaml", "--install-plan", cwd=tmp_path)
    assert out.returncode == 0, out.stderr


def test_doctor_without_torch_says_how_to_install(cli, tmp_path: Path) -> None:
    # A `torch` package that fails to import shadows the real one: the machine "has no torch".
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    env = {"PYTHONPATH": str(shadow.parent)}
    out = cli("doctor", "--json", cwd=tmp_path, env=env)
    assert out.returncode == 1
    torch = next(f for f in json.loads(out.stdout)["findings"] if f["id"] == "torch")
    assert torch["status"] == "fail" and torch["fix"].startswith("pip install 'torch>=2.6'")
    plan = cli("doctor", "--install-plan", cwd=tmp_path, env=env)
    assert plan.returncode == 1 and "pip install 'torch>=2.6'" in plan.stdout


def test_doctor_shows_the_privacy_settings(cli, tmp_path: Path) -> None:
    import base64

    import yaml

    cli("init", "run.yaml", cwd=tmp_path)
    data = yaml.safe_load((tmp_path / "run.yaml").read_text())
    data["privacy"] = {"encryption_key_env": "RUN_KEY", "pii": "redact", "offline": True,
                       "dp": {"enabled": True, "target_epsilon": 8}}
    data["train"] = {**data.get("train", {}), "task": "sft"}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    out = cli("doctor", "--config", "run.yaml", "--json", cwd=tmp_path, env={"RUN_KEY": ""})
    finding = next(f for f in json.loads(out.stdout)["findings"] if f["id"] == "privacy")
    assert out.returncode == 1 and finding["status"] == "fail" and "RUN_KEY is not set" in finding["summary"]
    key = base64.b64encode(bytes(32)).decode()
    out = cli("doctor", "--config", "run.yaml", "--json", cwd=tmp_path, env={"RUN_KEY": key})
    finding = next(f for f in json.loads(out.stdout)["findings"] if f["id"] == "privacy")
    assert finding["status"] == "ok", finding
    assert "encryption at rest: on (AES-256-GCM, key id" in finding["summary"]
    assert "differential privacy: DP-SGD to epsilon 8" in finding["summary"] and "PII in prepare: redact" in finding["summary"]
