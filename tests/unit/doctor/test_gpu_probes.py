"""GPU, CUDA and multi-GPU verdicts from recorded nvidia-smi outputs of real GPU types."""

from __future__ import annotations

from pathlib import Path

from llmkit.doctor import gpu as gpulib
from llmkit.doctor.report import run_doctor

from .conftest import FIXTURES, make_sources, torch_build


def doctor(**kw):
    return run_doctor(run_dir=Path("runs/x"), sources=make_sources(**kw))


def test_parse_query_and_header() -> None:
    gpus = gpulib.parse_gpu_query((FIXTURES / "a100x8" / "query.csv").read_text())
    assert len(gpus) == 8 and gpus[0].name == "NVIDIA A100-SXM4-80GB"
    assert gpus[0].memory_mib == 81920 and gpus[0].compute_capability == 8.0
    assert gpulib.parse_driver_cuda((FIXTURES / "h100" / "smi.txt").read_text()) == "12.8"
    assert gpulib.parse_gpu_query("garbage\n0, x, [N/A], [N/A], 1\n")[0].compute_capability is None


def test_consumer_cards_without_p2p() -> None:
    r = doctor(gpu_case="rtx4090x2", torch=torch_build("12.4", gpus=2))
    assert r.by_id("gpu.0").status == "ok" and r.by_id("gpu.0").facts["bf16"] is True
    assert r.by_id("cuda").status == "ok"
    mg = r.by_id("multi_gpu")
    assert mg.status == "warn" and "no P2P" in mg.summary and "NCCL_P2P_DISABLE" in mg.fix
    assert mg.facts["p2p_pairs_without_access"] == 2


def test_a100_node_minor_version_compat() -> None:
    r = doctor(gpu_case="a100x8", torch=torch_build("12.8", gpus=8))
    assert [f.id for f in r.findings if f.id.startswith("gpu.")] == [f"gpu.{i}" for i in range(8)]
    assert r.by_id("multi_gpu").status == "ok"
    cuda = r.by_id("cuda")
    assert cuda.status == "warn" and "minor-version" in cuda.summary  # cu128 on a 12.2 driver


def test_h100_ok() -> None:
    r = doctor(gpu_case="h100", torch=torch_build("12.8", gpus=1))
    assert r.by_id("gpu.0").status == "ok" and "bf16" in r.by_id("gpu.0").summary
    assert r.by_id("cuda").status == "ok"
    assert r.by_id("multi_gpu").status == "skip"
    assert not r.failed


def test_driver_too_old_for_torch_build() -> None:
    r = doctor(gpu_case="v100_old_driver", torch=torch_build("12.8", gpus=0))
    cuda = r.by_id("cuda")
    assert cuda.status == "fail" and r.failed
    assert "525.60.13" in cuda.fix and "cu118" in cuda.fix and "torch==2.7.1" in cuda.fix
    gpu0 = r.by_id("gpu.0")
    assert gpu0.status == "warn" and "fp16" in gpu0.summary  # compute capability 7.0: no bf16


def test_cpu_torch_on_gpu_machine_warns_with_cuda_install() -> None:
    r = doctor(gpu_case="h100", torch=torch_build(None))
    assert r.by_id("cuda").status == "warn"
    assert "cu128" in r.by_id("cuda").fix


def test_no_torch_gives_the_matching_install_command() -> None:
    r = doctor(gpu_case="h100", torch=None)
    t = r.by_id("torch")
    assert t.status == "fail" and r.failed
    assert t.fix == "pip install 'torch>=2.6' --index-url https://download.pytorch.org/whl/cu128"
    r = doctor(gpu_case=None, torch=None)
    assert r.by_id("torch").fix.endswith("/whl/cpu")


def test_install_command_table() -> None:
    cmd = gpulib.torch_install_command
    assert cmd("Linux", "x86_64", "13.1").endswith("cu130")
    assert cmd("Linux", "x86_64", "12.4").endswith("cu126")  # minor-version compatibility
    assert cmd("Linux", "x86_64", "11.4") == (
        "pip install 'torch==2.7.1' --index-url https://download.pytorch.org/whl/cu118")
    assert cmd("Linux", "x86_64", "10.2").endswith("/cpu")
    assert cmd("Linux", "x86_64", "12.6").endswith("cu126")
    assert cmd("Darwin", "arm64", None) == "pip install 'torch>=2.6'"
    assert cmd("Linux", "aarch64", None) == "pip install 'torch>=2.6'"


def test_driver_cuda_from_table() -> None:
    assert gpulib.driver_cuda_from_table("470.82.01") == "11.0"
    assert gpulib.driver_cuda_from_table("550.54.14") == "12.0"
    assert gpulib.driver_cuda_from_table("390.1") is None


def test_hanging_nvidia_smi_is_a_warning_not_a_crash() -> None:
    r = doctor(gpu_case="h100", torch=torch_build(None), hang=True)
    g = r.by_id("gpu")
    assert g.status == "warn" and "did not answer" in g.detail
