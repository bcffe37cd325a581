"""T1-T9 of RELIABILITY.md on a tiny model: kills, full disks, bit rot, retention, exact resumes,
config changes, SIGTERM and NaN. Runs the real loop (in-process or as the real CLI)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmkit.config.load import load_config
from llmkit.errors import RunFailure, UsageError
from llmkit.training import checkpoint as ckpt
from llmkit import faults
from llmkit.training.loop import train

from .helpers import llmkit, losses, make_run, same_tensors, tensors

pytestmark = pytest.mark.slow  # kills, resumes and many short runs


def run_train(cfg_path: Path, **kw):  # type: ignore[no-untyped-def]
    lines: list[str] = []
    result = train(load_config(cfg_path, environ={}), log=lines.append, **kw)
    return result, lines


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted 40-step run every resume is compared against."""
    root = tmp_path_factory.mktemp("ref")
    cfg = make_run(root)
    result, _ = run_train(cfg)
    assert result.reason == "completed" and result.step == 40
    return result.run_dir


def assert_same_as_reference(run: Path, reference: Path, from_step: int) -> None:
    ours, ref = losses(run), losses(reference)
    assert {s: ours[s] for s in range(from_step, 41)} == {s: ref[s] for s in range(from_step, 41)}
    assert same_tensors(tensors(run / "final" / "model.safetensors"), tensors(reference / "final" / "model.safetensors"))
    last = lambda r: ckpt.committed(r / "checkpoints")[-1][1]  # noqa: E731
    assert same_tensors(tensors(last(run) / "optimizer.safetensors"), tensors(last(reference) / "optimizer.safetensors"))


def test_t5_stop_mid_epoch_and_resume_is_bitwise_equal(tmp_path: Path, reference: Path) -> None:
    cfg = make_run(tmp_path)
    first, _ = run_train(cfg, stop_at_step=17)
    assert first.reason == "stop_at_step" and first.step == 17
    second, lines = run_train(cfg)
    assert any("resumed from" in line and "step-000017" in line for line in lines)
    assert second.step == 40
    assert_same_as_reference(second.run_dir, reference, 18)


def test_t6_resume_twice(tmp_path: Path, reference: Path) -> None:
    cfg = make_run(tmp_path)
    run_train(cfg, stop_at_step=10)
    mid, _ = run_train(cfg, stop_at_step=25)
    state = json.loads((ckpt.step_dir(mid.run_dir / "checkpoints", 25) / "trainer_state.json").read_text())
    assert state["data_position"]["position"] == 25 * 4  # four examples per step, never rewound
    run_train(cfg)
    assert_same_as_reference(mid.run_dir, reference, 11)


def test_t1_sigkill_during_save_at_many_offsets(tmp_path: Path, reference: Path) -> None:
    # Fault points per save: 4 files + checksums + rename + COMMITTED, then retention deletes.
    offsets = [1, 2, 3, 4, 5, 6, 7, 9, 12, 14, 16, 19, 22]
    for n in offsets:
        root = tmp_path / f"kill{n}"
        root.mkdir()
        cfg = make_run(root)
        out = llmkit("train", "--config", str(cfg), env={"LLMKIT_FAULT": f"save:kill@{n}"})
        assert out.returncode == -signal.SIGKILL, (n, out.stderr[-2000:])
        ckpts = root / "runs" / "t" / "checkpoints"
        for _, path in ckpt.committed(ckpts):
            ckpt.verify(path)  # every committed checkpoint is whole
        result, lines = run_train(cfg)
        assert result.step == 40
        assert not [p for p in ckpts.iterdir() if p.name.startswith(".tmp-") or not (p / ckpt.COMMITTED).exists()]
        assert_same_as_reference(result.run_dir, reference, 41)  # final weights and optimizer equal


def test_t2_disk_full_during_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_run(tmp_path, train={"keep_last": 1})
    run_train(cfg, stop_at_step=10)
    ckpts = tmp_path / "runs" / "t" / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpt.step_dir(ckpts, 10).iterdir()}
    monkeypatch.setattr(faults, "_site", "save")
    monkeypatch.setattr(faults, "_rule", "enospc@2")
    monkeypatch.setattr(faults, "_hits", {})
    with pytest.raises(RunFailure, match="disk full while saving the step-15 checkpoint") as info:
        run_train(cfg, stop_at_step=15)
    assert str(ckpts) in str(info.value) and "MiB" in str(info.value)
    assert [s for s, _ in ckpt.committed(ckpts)] == [10]  # retention deleted nothing
    assert {p.name: p.read_bytes() for p in ckpt.step_dir(ckpts, 10).iterdir()} == before
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000010"]
    # the CLI says the same and exits non-zero
    out = llmkit("train", "--config", str(cfg), "--stop-at-step", "15", env={"LLMKIT_FAULT": "save:enospc@1"})
    assert out.returncode == 1 and "disk full" in out.stderr and "Traceback" not in out.stderr


def test_t3_corrupted_checkpoint_falls_back(tmp_path: Path, reference: Path) -> None:
    cfg = make_run(tmp_path)
    run_train(cfg, stop_at_step=10)
    ckpts = tmp_path / "runs" / "t" / "checkpoints"
    model_file = ckpt.step_dir(ckpts, 10) / "model.safetensors"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_file.write_bytes(bytes(data))
    with pytest.raises(ckpt.ChecksumError, match="model.safetensors"):
        ckpt.read_checkpoint(ckpt.step_dir(ckpts, 10))
    result, lines = run_train(cfg)
    assert any("step 10 is damaged" in line and "falling back" in line for line in lines)
    assert any("resumed from" in line and "step-000005" in line for line in lines)
    assert_same_as_reference(result.run_dir, reference, 6)
    # truncation is caught the same way
    f = ckpt.committed(ckpts)[-1][1] / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ckpt.ChecksumError, match="optimizer.safetensors"):
        ckpt.verify(f.parent)


def test_t4_retention_sorts_numerically(tmp_path: Path) -> None:
    for step in (9, 10, 100, 1000):
        d = ckpt.step_dir(tmp_path, step)
        d.mkdir()
        (d / ckpt.COMMITTED).write_text(str(step))
    (tmp_path / "step-2000").mkdir()  # partial: no COMMITTED, must not count as newest
    assert [s for s, _ in ckpt.committed(tmp_path)] == [9, 10, 100, 1000]
    deleted = ckpt.apply_retention(tmp_path, keep_last=2)
    assert sorted(p.name for p in deleted) == ["step-000009", "step-000010"]
    assert [s for s, _ in ckpt.committed(tmp_path)] == [100, 1000]
    assert ckpt.apply_retention(tmp_path, keep_last=1)[0].name == "step-000100"
    assert [s for s, _ in ckpt.committed(tmp_path)] == [1000]
    ckpt.remove_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-001000"]


def test_t7_changed_config_is_refused_with_a_diff(tmp_path: Path) -> None:
    cfg = make_run(tmp_path)
    run_train(cfg, stop_at_step=5)
    changed = make_run(tmp_path, prepared=False, train={"learning_rate": 0.001, "global_batch_size": 8})
    with pytest.raises(UsageError) as info:
        run_train(changed)
    text = str(info.value)
    assert "train.learning_rate: 0.003 -> 0.001" in text and "train.global_batch_size: 4 -> 8" in text
    assert "--allow-config-change" in text
    result, lines = run_train(changed, allow_config_change=True, stop_at_step=7)
    assert result.step == 7
    # watching settings may change freely
    watched = make_run(tmp_path, prepared=False, train={"learning_rate": 0.001, "global_batch_size": 8,
                                                        "log_every_steps": 3, "keep_last": 5})
    assert run_train(watched, stop_at_step=8)[0].step == 8


def test_t7_changed_data_is_refused(tmp_path: Path) -> None:
    cfg = make_run(tmp_path)
    run_train(cfg, stop_at_step=5)
    corpus = tmp_path / "other.txt"
    corpus.write_text("\n\n".join(f"Other text number {i}. " * 20 for i in range(200)))
    changed = make_run(tmp_path, data={"source": "text", "path": str(corpus)})
    with pytest.raises(UsageError, match="data: the prepared data changed"):
        run_train(changed)


def test_t8_sigterm_mid_step_checkpoints_and_resumes_exactly(tmp_path: Path, reference: Path) -> None:
    cfg = make_run(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "train", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "LLMKIT_FAULT": "step:sleep=0.25"})
    metrics = tmp_path / "runs" / "t" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    time.sleep(0.1)  # inside a step (each sleeps 0.25 s)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    stopped = max(s for s, _ in ckpt.committed(tmp_path / "runs" / "t" / "checkpoints"))
    assert 3 <= stopped < 40
    assert max(losses(tmp_path / "runs" / "t")) == stopped  # the step in flight was finished and saved
    result, _ = run_train(cfg)
    assert_same_as_reference(result.run_dir, reference, stopped + 1)


def test_t9_nan_loss_stops_without_stepping_or_saving(tmp_path: Path) -> None:
    cfg = make_run(tmp_path)
    out = llmkit("train", "--config", str(cfg), env={"LLMKIT_FAULT": "loss:nan@7"})
    assert out.returncode == 1 and "non-finite loss at step 7" in out.stderr and "Traceback" not in out.stderr
    ckpts = tmp_path / "runs" / "t" / "checkpoints"
    assert [s for s, _ in ckpt.committed(ckpts)] == [5]
    assert not (tmp_path / "runs" / "t" / "final").exists()


def test_t9_skip_policy_never_applies_the_bad_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    (tmp_path / "a").mkdir()
    clean = make_run(tmp_path / "a")
    run_train(clean, stop_at_step=6)
    skip_root = tmp_path / "b"
    skip_root.mkdir()
    skipping = make_run(skip_root, train={"nonfinite": "skip"})
    monkeypatch.setattr(faults, "_site", "loss")
    monkeypatch.setattr(faults, "_rule", "nan@7")
    result, lines = run_train(skipping, stop_at_step=7)
    assert any("step 7: non-finite loss, batch skipped" in line for line in lines)
    at6 = ckpt.step_dir(tmp_path / "a" / "runs" / "t" / "checkpoints", 6)
    at7 = ckpt.step_dir(skip_root / "runs" / "t" / "checkpoints", 7)
    assert same_tensors(tensors(at6 / "model.safetensors"), tensors(at7 / "model.safetensors"))
    assert same_tensors(tensors(at6 / "optimizer.safetensors"), tensors(at7 / "optimizer.safetensors"))
    assert all(torch.isfinite(t).all() for t in tensors(at7 / "model.safetensors").values())
