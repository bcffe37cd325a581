"""CPU, torch, disk, shm, packages and hub verdicts; time limits; the JSON schema."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import jsonschema
import pytest

from llmkit.config.schema import RunConfig
from llmkit.doctor import probes as probes_mod
from llmkit.doctor import report as report_mod
from llmkit.doctor.probes import cpu_verdict
from llmkit.doctor.report import SCHEMA_PATH, install_plan, render_json, report_schema, run_doctor
from llmkit.doctor.sources import _run, CommandTimeout

from .conftest import EPYC, OLD_XEON, make_sources, torch_build


def doctor(config=None, **kw):
    return run_doctor(config, run_dir=Path("runs/x"), sources=make_sources(**kw))


def test_cpu_with_avx512_bf16_recommends_bf16() -> None:
    f = cpu_verdict(EPYC, 2, 24 * 2**30)
    assert f.facts["precision"] == "bf16" and "fp32 masters" in f.summary and "bf16 autocast" in f.summary
    assert "AMD EPYC 9R14" in f.summary and "avx512_bf16" in f.summary


def test_cpu_without_bf16_recommends_fp32() -> None:
    f = cpu_verdict(OLD_XEON, 28, None)
    assert f.facts["precision"] == "fp32" and "fp32" in f.summary


def test_arm_cpu_with_bf16_feature() -> None:
    f = cpu_verdict("Features\t: fp asimd sve bf16 i8mm\n", 64, None)
    assert f.facts["precision"] == "bf16"


def test_unreadable_cpuinfo_is_a_warning() -> None:
    def deny(path: str) -> str:
        raise PermissionError(errno.EACCES, "Permission denied")

    r = doctor(torch=torch_build(), read_text=deny)
    assert r.by_id("cpu").status == "warn" and "unknown" in r.by_id("cpu").summary


def test_old_torch_is_refused_for_pickle_cve() -> None:
    r = doctor(torch=torch_build(version="2.5.1"))
    t = r.by_id("torch")
    assert t.status == "fail" and "CVE-2025-32434" in t.detail and "torch>=2.6" in t.fix


def test_broken_torch_import() -> None:
    from llmkit.doctor.sources import TorchInfo

    r = doctor(torch=TorchInfo(version="2.9.1", import_error="libcudnn.so.9: cannot open"))
    assert r.by_id("torch").status == "fail" and "libcudnn" in r.by_id("torch").detail


def test_read_only_run_dir_fails_with_fix() -> None:
    def read_only(path: str) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    r = doctor(torch=torch_build(), check_writable=read_only)
    d = r.by_id("disk")
    assert d.status == "fail" and "Read-only" in d.summary and "runs_root" in d.fix


def test_disk_smaller_than_checkpoints_of_the_config() -> None:
    cfg = RunConfig.model_validate({"name": "big", "model": {"hidden_size": 2048, "num_hidden_layers": 16,
                                                              "num_attention_heads": 16}})
    r = doctor(cfg, torch=torch_build(), disk_free=lambda p: 2 * 2**30)
    d = r.by_id("disk")
    assert d.status == "fail" and d.facts["needed_bytes"] > d.facts["free_bytes"]
    ok = doctor(cfg, torch=torch_build())
    assert ok.by_id("disk").status == "ok"


def test_small_shm_warns() -> None:
    r = doctor(torch=torch_build(), shm_bytes=lambda: 64 * 2**20)
    assert r.by_id("shm").status == "warn" and "--shm-size" in r.by_id("shm").fix


def test_missing_required_package_fails_with_command() -> None:
    real = make_sources().dist_version

    def versions(name: str):
        return None if name == "transformers" else "4.99" if name == "tokenizers" else real(name)

    r = doctor(torch=torch_build(), dist_version=versions)
    p = r.by_id("packages")
    assert p.status == "fail" and "transformers missing" in p.summary and "'transformers>=5'" in p.fix


def test_config_needing_a_missing_extra_fails() -> None:
    real = make_sources().dist_version
    cfg = RunConfig.model_validate({"name": "l", "model": {"from_pretrained": "base", "lora": {"enabled": True}}})
    r = doctor(cfg, torch=torch_build(), dist_version=lambda n: None if n == "peft" else real(n))
    e = r.by_id("extras")
    assert e.status == "fail" and e.fix == "pip install 'llmkit[lora]'"
    assert install_plan(r, cfg)[-1] == "pip install 'llmkit[lora]'"


def test_install_plan_puts_torch_first() -> None:
    r = doctor(torch=None)
    steps = install_plan(r, None)
    assert steps and steps[0].startswith("pip install 'torch>=2.6'")


def test_hub_token_never_printed() -> None:
    secret = "hf_abcdefSECRETvalue123"
    r = doctor(torch=torch_build(), environ={"HF_TOKEN": secret})
    assert "HF_TOKEN" in r.by_id("hub").summary
    assert secret not in render_json(r)


def test_hub_reachability_only_with_network_flag() -> None:
    calls = []

    def connect(host, port, timeout):
        calls.append(host)
        raise OSError("Network is unreachable")

    src = make_sources(torch=torch_build(), connect=connect)
    assert "not tested" in run_doctor(run_dir=Path("x"), sources=src).by_id("hub").summary
    assert calls == []
    r = run_doctor(run_dir=Path("x"), sources=src, network=True)
    assert r.by_id("hub").status == "warn" and calls == ["huggingface.co"]


def test_a_crashing_probe_becomes_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ctx):
        raise ZeroDivisionError("bad math")

    monkeypatch.setitem(probes_mod.PROBES, "shm", boom)
    r = doctor(torch=torch_build())
    assert r.by_id("shm").status == "warn" and "ZeroDivisionError" in r.by_id("shm").summary


def test_a_hanging_probe_is_time_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(probes_mod.PROBES, "shm", lambda ctx: time.sleep(30))
    start = time.monotonic()
    r = run_doctor(run_dir=Path("x"), sources=make_sources(torch=torch_build()), timeout_s=0.5)
    assert time.monotonic() - start < 10
    assert r.by_id("shm").status == "warn" and "did not finish" in r.by_id("shm").summary


def test_real_command_runner_times_out() -> None:
    with pytest.raises(CommandTimeout):
        _run(["sleep", "5"], 0.2)
    with pytest.raises(FileNotFoundError):
        _run(["no-such-command-llmkit"], 1.0)


def test_json_matches_the_published_schema() -> None:
    published = json.loads(SCHEMA_PATH.read_text())
    assert published == report_schema(), "regenerate data/report.schema.json"
    for kw in ({"gpu_case": "a100x8", "torch": torch_build("12.8", gpus=8)}, {"torch": None}):
        jsonschema.validate(json.loads(render_json(doctor(**kw))), published)


def test_exit_status_follows_fail() -> None:
    assert doctor(torch=None).failed
    assert not doctor(torch=torch_build()).failed
    assert report_mod.DoctorReport.model_validate_json(render_json(doctor(torch=None))).failed
