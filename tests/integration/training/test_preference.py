"""Preference tuning end to end on tiny models: prepare's report, each loss trains, the reference
(adapters disabled, a frozen copy, precomputed) is the starting policy, exact resume after kill -9,
two processes equal one, and what is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from llmkit.config.load import load_config
from llmkit.errors import ConfigError
from llmkit.training import checkpoint as ckpt

from .helpers import llmkit, losses, make_run, records, same_tensors, tensors
from .helpers import train_logged as run

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from families import make_family  # noqa: E402

PAIRS = [{"prompt": f"What is {a} plus {b}?", "chosen": f"{a} plus {b} is {a + b}.", "rejected": f"It is {a * b + 7}."}
         for a in range(2, 9) for b in range(2, 8)]
PREF = {"train": {"task": "preference", "sequence_length_tokens": 32, "max_steps": 12, "checkpoint_every_steps": 4,
                  "eval_every_steps": 6, "global_batch_size": 4, "micro_batch_size": 2}}


def pref_run(root: Path, name: str, extra: dict[str, Any] | None = None, pairs: list[dict[str, Any]] | None = None,
             prepared: bool = True, **sections: Any) -> Path:
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in (pairs or PAIRS)))
    train_section = {**PREF["train"], **(extra or {})}
    return make_run(root, name=name, prepared=prepared, data={"preference_path": str(data), "val_fraction": 0.2,
                                                              **sections.pop("data", {})},
                    train=train_section, **sections)


def test_prepare_reports_shapes_and_drops_and_strict_refuses(tmp_path: Path) -> None:
    conv = [{"role": "user", "content": "Hi"}]
    odd = [{"prompt": "Same?", "chosen": "yes", "rejected": "yes"},
           {"prompt": "Empty?", "chosen": "", "rejected": "no"},
           {"chosen": conv + [{"role": "assistant", "content": "Hello!"}],
            "rejected": conv + [{"role": "assistant", "content": "Go away."}]}]
    cfg = pref_run(tmp_path, "p", pairs=PAIRS + odd, prepared=False)
    out = llmkit("prepare", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "preference: 45 examples from" in out.stdout and "44 pair, 1 conversations" in out.stdout
    assert "dropped 1 example(s) with identical chosen and rejected answers" in out.stdout
    assert "dropped 1 example(s) with an empty answer" in out.stdout and "line 44" in out.stdout
    meta = json.loads((tmp_path / "runs" / "p" / "data" / "preference" / "meta.json").read_text())
    assert meta["train_pairs"] + meta["val_pairs"] == 43 and meta["dropped"]["identical"] == 1
    strict = llmkit("prepare", "--config", str(cfg), "--set", "name=q", "--strict")
    assert strict.returncode == 2 and "--strict: 2 preference example(s) would be dropped" in strict.stderr
    assert not (tmp_path / "runs" / "q" / "data" / "preference").exists()


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo", "orpo", "kto"])
def test_every_loss_trains_and_logs_its_metrics(tmp_path: Path, loss: str) -> None:
    cfg = pref_run(tmp_path, loss, {"preference": {"loss": loss}, "max_steps": 6})
    result, lines = run(cfg)
    assert result.reason == "completed"
    train_rec, eval_rec = records(result.run_dir, "train")[-1], records(result.run_dir, "eval")[-1]
    assert {"rewards_chosen", "rewards_rejected", "logp_chosen"} <= set(train_rec)
    assert {"val_loss", "val_rewards_chosen", "val_logp_chosen"} <= set(eval_rec)
    if loss != "kto":
        assert {"reward_accuracy", "reward_margin"} <= set(train_rec) and "val_reward_accuracy" in eval_rec
        assert any("reward acc" in line for line in lines)
    else:
        assert "kl" in train_rec
    assert (result.run_dir / "final" / "model.safetensors").exists()
    has_reference = loss in ("dpo", "ipo", "kto")
    assert any(("reference = a frozen copy" in line) == has_reference for line in lines if "preference:" in line) \
        or not has_reference


def test_precomputed_reference_equals_the_frozen_copy(tmp_path: Path) -> None:
    """fp32, full fine-tuning: the same losses whether the reference is a frozen copy or was
    computed before step 1 (and at step 1 the policy is the reference: every reward is 0)."""
    copy_run, lines = run(pref_run(tmp_path, "copy", {"preference": {"precompute_reference": False}}))
    assert any("reference = a frozen copy" in line for line in lines)
    pre_run, lines = run(pref_run(tmp_path, "pre", {"preference": {"precompute_reference": True}}))
    assert any("reference log-probabilities of 42 examples computed" in line for line in lines)
    a, b = losses(copy_run.run_dir), losses(pre_run.run_dir)
    assert max(abs(a[s] - b[s]) for s in a) < 1e-5
    first = records(pre_run.run_dir, "train")[0]
    assert abs(first["rewards_chosen"]) < 1e-5 and abs(first["reward_margin"]) < 1e-5
    assert first["reward_accuracy"] == 0.5  # ties count half
    assert (pre_run.run_dir / "reference" / "train.npy").exists()
    # `llmkit eval` scores the final model against the same reference: the stored one, or the starting
    # weights (a frozen copy run has none stored: its base is rebuilt from model.from_pretrained, or
    # refused without one)
    out = llmkit("eval", str(pre_run.run_dir), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["reference"] == "precomputed" and metrics["loss"] == "dpo"
    last = records(pre_run.run_dir, "eval")[-1]
    assert abs(metrics["val_reward_accuracy"] - last["val_reward_accuracy"]) < 1e-6
    refused = llmkit("eval", str(copy_run.run_dir))
    assert refused.returncode != 0 and "no model.from_pretrained base" in refused.stderr


def test_lora_reference_is_the_base_with_adapters_disabled(tmp_path: Path) -> None:
    base = make_family("llama3", tmp_path / "base")
    sections = {"model": {"from_pretrained": str(base), "lora": {"enabled": True, "r": 4, "base_bits": 4}},
                "tokenizer": {"kind": "pretrained", "path": str(base)}}
    result, lines = run(pref_run(tmp_path, "lora", {"max_steps": 4, "precision": "auto"}, **sections))
    assert any("reference = the model with its LoRA adapters disabled" in line for line in lines)
    first = records(result.run_dir, "train")[0]
    assert first["rewards_chosen"] == 0.0 and first["reward_margin"] == 0.0  # lora_B starts at 0: policy = reference
    assert records(result.run_dir, "train")[-1]["reward_margin"] != 0.0
    assert (result.run_dir / "final" / "adapter" / "adapter_model.safetensors").exists()
    out = llmkit("eval", str(result.run_dir), "--json")  # the merged model against its 4-bit base
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["reference"] == "copy" and 0.0 <= metrics["val_reward_accuracy"] <= 1.0


@pytest.mark.slow
def test_resume_after_kill_9_is_exact(tmp_path: Path) -> None:
    extra = {"preference": {"precompute_reference": True}}
    whole, _ = run(pref_run(tmp_path, "whole", extra))
    cfg = pref_run(tmp_path, "killed", extra)
    out = llmkit("train", "--config", str(cfg), env={"LLMKIT_FAULT": "save:kill@10"})
    assert out.returncode == -9
    assert [s for s, _ in ckpt.committed(tmp_path / "runs" / "killed" / "checkpoints")] == [4]
    again = llmkit("train", "--config", str(cfg))
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-2000:]
    assert "read from the run's reference/" in again.stdout
    killed = tmp_path / "runs" / "killed"
    assert {s: v for s, v in losses(killed).items() if s > 4} == {s: v for s, v in losses(whole.run_dir).items() if s > 4}
    assert same_tensors(tensors(killed / "final" / "model.safetensors"),
                        tensors(whole.run_dir / "final" / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path) -> None:
    """DDP and FSDP2, a pair a rank per micro-batch (its chosen and rejected answers together)."""
    one, _ = run(pref_run(tmp_path, "one"))
    for wrapper in ("ddp", "fsdp"):
        cfg = pref_run(tmp_path, wrapper, {"distributed": wrapper, "micro_batch_size": 1})
        out = llmkit("train", "--config", str(cfg), "--nproc-per-node", "2")
        assert out.returncode == 0, out.stderr[-3000:]
        a, b = losses(one.run_dir), losses(tmp_path / "runs" / wrapper)
        worst = max(abs(a[s] - b[s]) for s in a)
        wa = tensors(one.run_dir / "final" / "model.safetensors")
        wb = tensors(tmp_path / "runs" / wrapper / "final" / "model.safetensors")
        weights = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
        print(f"\nDPO, {wrapper}, 2 processes vs 1: largest loss difference {worst:.2e}, weights {weights:.2e}")
        assert worst < 1e-4 and weights < 1e-4


@pytest.mark.slow
def test_compiled_equals_eager(tmp_path: Path) -> None:
    eager, _ = run(pref_run(tmp_path, "eager", {"max_steps": 4}))
    compiled, lines = run(pref_run(tmp_path, "compiled", {"max_steps": 4, "compile": True}))
    assert not any("falling back" in line for line in lines), lines
    a, b = losses(eager.run_dir), losses(compiled.run_dir)
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4


def test_encrypted_run_seals_the_reference(tmp_path: Path) -> None:
    import base64
    import os

    import numpy as np

    key = base64.b64encode(bytes(range(32))).decode()
    cfg = pref_run(tmp_path, "sealed", {"max_steps": 2, "preference": {"precompute_reference": True}},
                   prepared=False, privacy={"encryption_key_env": "PREF_KEY"})
    env = {"PREF_KEY": key}
    for stage in ("prepare", "train"):
        out = llmkit(stage, "--config", str(cfg), env=env)
        assert out.returncode == 0, out.stderr[-2000:]
    stored = tmp_path / "runs" / "sealed" / "reference" / "train.npy"
    assert stored.exists()
    with pytest.raises(ValueError):
        np.load(stored, allow_pickle=False)  # sealed, not a plain .npy
    again = llmkit("train", "--config", str(cfg), "--set", "train.max_steps=3", "--allow-config-change", env=env)
    assert again.returncode == 0 and "read from the run's reference/" in again.stdout, again.stderr[-2000:]
    assert "PREF_KEY" not in os.environ


def test_pairs_from_parquet_with_renamed_fields(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"question": p["prompt"], "good": p["chosen"], "bad": p["rejected"]} for p in PAIRS]
    path = tmp_path / "pairs.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    cfg = make_run(tmp_path, name="pq", prepared=False, data={"preference_path": str(path), "val_fraction": 0.2,
                   "preference_fields": {"prompt": "question", "chosen": "good", "rejected": "bad"}},
                   train=PREF["train"])
    out = llmkit("prepare", "--config", str(cfg))
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"preference: {len(PAIRS)} examples from {path}: {len(PAIRS)} pair" in out.stdout


@pytest.mark.parametrize("setting,message", [
    ({"loss": "dpo", "simpo_gamma": 1.0}, "simpo_gamma is set, but the dpo loss does not use it"),
    ({"loss": "orpo", "beta": 0.5}, "beta is set, but the orpo loss does not use it"),
    ({"loss": "kto", "precompute_reference": True}, "does not apply to kto"),
])
def test_settings_a_loss_would_ignore_are_refused(tmp_path: Path, setting: dict[str, Any], message: str) -> None:
    cfg = pref_run(tmp_path, "r", {"preference": setting})
    with pytest.raises(ConfigError, match=message):
        run(cfg)


def test_pairs_are_required_outside_kto_and_dp_is_refused(tmp_path: Path) -> None:
    unpaired = [{"prompt": f"Is {n} even?", "completion": "yes" if n % 2 == 0 else "no", "label": n % 3 != 0}
                for n in range(30)]
    cfg = pref_run(tmp_path, "u", pairs=unpaired)
    out = llmkit("train", "--config", str(cfg))
    assert out.returncode != 0 and "the dpo loss needs pairs" in out.stderr
    ok = llmkit("train", "--config", str(cfg), "--set", "train.preference.loss=kto", "--set", "train.max_steps=2")
    assert ok.returncode == 0, ok.stderr[-2000:]
    dp = llmkit("config", "validate", str(cfg), "--set", "privacy.dp.enabled=true", "--set", "privacy.dp.noise_multiplier=1.0")
    assert dp.returncode != 0 and "does not cover train.task preference" in " ".join(dp.stderr.split())


def test_auto_reference_precomputes_when_a_copy_would_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import llmkit.device
    from llmkit.objectives import reference

    cfg = load_config(pref_run(tmp_path, "auto", prepared=False), environ={})
    cpu = torch.device("cpu")
    assert reference._kind(cfg, cpu, "fp32", 2) == "copy"  # a few MB: it fits
    monkeypatch.setattr(llmkit.device, "memory_budget_bytes", lambda _device: 1e6)
    assert reference._kind(cfg, cpu, "fp32", 2) == "precomputed"
    lora = cfg.model_copy(update={"model": cfg.model.model_copy(update={"lora": cfg.model.lora.model_copy(
        update={"enabled": True})})})
    assert reference._kind(lora, cpu, "fp32", 2) == "adapters_off"  # never a copy for LoRA
