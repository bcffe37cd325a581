"""RL (GRPO) end to end on tiny models: prepare's prompts and reward files, the metrics a run
records, user reward functions (opt-in, copied and hashed, failures that stop the run), reused
rollouts with a KL reference, exact resume after kill -9, `llmkit eval`, the report, and what is
refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from llmkit.config.load import load_config
from llmkit.errors import ConfigError, RunFailure
from llmkit.training import checkpoint as ckpt

from .helpers import llmkit, losses, make_run, records, same_tensors, tensors
from .helpers import train_logged as run

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from families import make_family  # noqa: E402

PROMPTS = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b)} for a in range(2, 9) for b in range(2, 7)]
REWARDS = [{"function": "contains", "weight": 0.5}, {"function": "length", "weight": 0.5, "max_tokens": 6}]
RL = {"task": "rl", "sequence_length_tokens": 48, "max_steps": 6, "checkpoint_every_steps": 3, "eval_every_steps": 3,
      "global_batch_size": 8, "micro_batch_size": 4, "eval_batches": 2,
      "rl": {"group_size": 4, "max_new_tokens": 8, "rewards": REWARDS}}
USER_REWARD = '''
def digits(prompt, completion, example):
    """The share of the answer's characters that are digits."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def broken(prompt, completion, example):
    return example["missing"]


def not_a_number(prompt, completion, example):
    return float("nan")
'''


def rl_run(root: Path, name: str, rl: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
           prompts: list[dict[str, Any]] | None = None, prepared: bool = True, **sections: Any) -> Path:
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in (prompts or PROMPTS)))
    train_section = {**RL, **(extra or {}), "rl": {**RL["rl"], **(rl or {})}}
    sections.setdefault("model", {"max_position_embeddings": 64})
    return make_run(root, name=name, prepared=prepared, data={"prompts_path": str(data), "val_fraction": 0.2},
                    train=train_section, **sections)


def test_prepare_renders_prompts_copies_reward_files_and_drops_long_prompts(tmp_path: Path) -> None:
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text(USER_REWARD)
    chat = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
             "answer": "hello"}]
    long = [{"prompt": "word " * 80, "answer": "x"}]
    cfg = rl_run(tmp_path, "p", {"allow_user_rewards": True, "reward_files": [str(rewards)],
                                  "rewards": [{"function": "my_rewards:digits"}]}, prompts=PROMPTS + chat + long,
                 prepared=False)
    out = llmkit("prepare", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "rl: dropped 1 prompt(s) longer than" in out.stdout and "line 37" in out.stdout
    assert "1 reward file(s)" in out.stdout
    data = tmp_path / "runs" / "p" / "data" / "rl"
    meta = json.loads((data / "meta.json").read_text())
    assert meta["train_prompts"] + meta["val_prompts"] == 36 and meta["dropped_too_long"] == 1
    import hashlib

    assert meta["reward_files"] == {"my_rewards.py": hashlib.sha256(USER_REWARD.encode()).hexdigest()}
    assert (data / "rewards" / "my_rewards.py").read_text() == USER_REWARD
    rows = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    assert all(r["prompt"].endswith("assistant\n") for r in rows)  # the generation prompt is rendered
    assert any("Be brief." in r["prompt"] for r in rows + [json.loads(x) for x in (data / "val.jsonl").read_text()
                                                          .splitlines()])
    strict = llmkit("prepare", "--config", str(cfg), "--set", "name=q", "--strict")
    assert strict.returncode == 2 and "--strict: 1 prompt(s) would be dropped" in strict.stderr


def test_a_run_records_rewards_sampling_and_groups(tmp_path: Path) -> None:
    result, lines = run(rl_run(tmp_path, "r", extra={"eval_at_start": True}))
    assert result.reason == "completed"
    train_rec = records(result.run_dir, "train")
    assert {"reward", "reward_contains", "reward_length", "reward_std", "length", "ended", "zero_spread_groups",
            "clip_fraction", "generation_s", "rollout_tokens", "rollout_tokens_per_s"} <= set(train_rec[0])
    assert all(0 <= r["zero_spread_groups"] <= 1 and 0 <= r["reward"] <= 1 for r in train_rec)
    assert train_rec[0]["clip_fraction"] == 0  # on-policy: every ratio is 1
    evals = records(result.run_dir, "eval")
    assert evals[0]["step"] == 0 and {"val_reward", "val_reward_contains", "val_length", "val_ended"} <= set(evals[0])
    assert evals[0]["val_loss"] == -evals[0]["val_reward"]
    assert any("| reward " in line and "flat groups" in line for line in lines)
    samples = [json.loads(x) for x in (result.run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert {s["round"] for s in samples} == set(range(6)) and {"contains", "length"} == set(samples[0]["rewards"])
    assert (result.run_dir / "final" / "model.safetensors").exists()
    # llmkit eval samples the validation prompts as training's evaluation does (same seeds)
    out = llmkit("eval", str(result.run_dir), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["val_reward"] == pytest.approx(evals[-1]["val_reward"]) and metrics["loss"] == "grpo"
    report = llmkit("report", str(result.run_dir))
    assert report.returncode == 0, report.stderr
    html = (result.run_dir / "report.html").read_text()
    assert "Rollouts (the last rounds" in html and "Answer length" in html


def test_user_rewards_are_opt_in_copied_and_fail_loudly(tmp_path: Path) -> None:
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text(USER_REWARD)
    user = {"allow_user_rewards": True, "reward_files": [str(rewards)]}
    good, _ = run(rl_run(tmp_path, "good", {**user, "rewards": [{"function": "my_rewards:digits"}]}))
    assert "reward_my_rewards:digits" in records(good.run_dir, "train")[0]
    rewards.write_text("def digits(p, c, e):\n    return 1.0\n")  # editing the original does not reach the run
    with pytest.raises(ConfigError, match="user code"):
        load_config(rl_run(tmp_path, "off", {"rewards": [{"function": "my_rewards:digits"}],
                                             "reward_files": [str(rewards)]}, prepared=False), environ={})
    for name, why in (("broken", "raised KeyError"), ("not_a_number", "returned nan, not a finite number")):
        rewards.write_text(USER_REWARD)
        with pytest.raises(RunFailure, match=why) as err:
            run(rl_run(tmp_path, name, {**user, "rewards": [{"function": f"my_rewards:{name}"}]}))
        assert "What is" in err.value.detail  # the example it failed on
    # the run's copy is checked against prepare's hash: a resume runs the code the run started with
    copy = tmp_path / "runs" / "good" / "data" / "rl" / "rewards" / "my_rewards.py"
    copy.write_text(USER_REWARD + "\n# edited\n")
    with pytest.raises(ConfigError, match="changed since prepare"):
        run(rl_run(tmp_path, "good", {**user, "rewards": [{"function": "my_rewards:digits"}]},
                   extra={"max_steps": 8}, prepared=False))


def test_reused_rollouts_clip_and_the_kl_reference(tmp_path: Path) -> None:
    """steps_per_generation 2: the second step's ratios move off 1 (some clipped); kl_beta: a frozen
    copy of the starting weights (full fine-tuning), KL 0 at step 1."""
    varied = [{"function": "regex", "pattern": "[ae]"}]  # a random model's answers differ on it
    cfg = rl_run(tmp_path, "reuse", {"steps_per_generation": 2, "kl_beta": 0.1, "clip_epsilon": 0.05,
                                     "loss": "dr_grpo", "rewards": varied}, extra={"learning_rate": 0.01, "warmup_steps": 0})
    result, lines = run(cfg)
    assert any("KL reference: a frozen copy" in line for line in lines)
    recs = records(result.run_dir, "train")
    assert abs(recs[0]["kl"]) < 1e-6 and recs[0]["clip_fraction"] == 0
    assert "generation_s" in recs[0] and "generation_s" not in recs[1]  # one generation per two steps
    assert max(r["clip_fraction"] for r in recs[1::2]) > 0 and max(r["kl"] for r in recs) > 0


def test_resume_after_kill_9_is_exact(tmp_path: Path) -> None:
    """Killed in the middle of a round of reused rollouts: the buffer is in the checkpoint."""
    rl = {"steps_per_generation": 2}
    whole, _ = run(rl_run(tmp_path, "whole", rl))
    cfg = rl_run(tmp_path, "killed", rl)
    out = llmkit("train", "--config", str(cfg), env={"LLMKIT_FAULT": "save:kill@10"})
    assert out.returncode == -9
    assert [s for s, _ in ckpt.committed(tmp_path / "runs" / "killed" / "checkpoints")] == [3]
    again = llmkit("train", "--config", str(cfg))
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-2000:]
    killed = tmp_path / "runs" / "killed"
    assert {s: v for s, v in losses(killed).items() if s > 3} == {s: v for s, v in losses(whole.run_dir).items() if s > 3}
    assert [r["reward"] for r in records(killed, "train") if r["step"] > 3] == \
        [r["reward"] for r in records(whole.run_dir, "train") if r["step"] > 3]
    assert same_tensors(tensors(killed / "final" / "model.safetensors"),
                        tensors(whole.run_dir / "final" / "model.safetensors"))


def test_encrypted_run_seals_prompts_and_reward_files(tmp_path: Path) -> None:
    """Under encryption at rest the prompts and the copied reward files are sealed, the user reward
    still loads (its hash checked on the plain text), and no plain rollouts.jsonl is written."""
    import base64

    from llmkit.privacy import crypto

    rewards = tmp_path / "my_rewards.py"
    rewards.write_text(USER_REWARD)
    cfg = rl_run(tmp_path, "sealed", {"allow_user_rewards": True, "reward_files": [str(rewards)],
                                      "rewards": [{"function": "my_rewards:digits"}]}, extra={"max_steps": 2},
                 prepared=False, privacy={"encryption_key_env": "RL_KEY"})
    env = {"RL_KEY": base64.b64encode(bytes(range(32))).decode()}
    for stage in ("prepare", "train"):
        out = llmkit(stage, "--config", str(cfg), env=env)
        assert out.returncode == 0, out.stderr[-2000:]
    data = tmp_path / "runs" / "sealed" / "data" / "rl"
    for f in (data / "train.jsonl", data / "val.jsonl", data / "rewards" / "my_rewards.py"):
        assert crypto.is_sealed(f), f
        assert b"What is" not in f.read_bytes() and b"def digits" not in f.read_bytes()
    assert not (tmp_path / "runs" / "sealed" / "rollouts.jsonl").exists()


@pytest.mark.parametrize("precision", ["bf16", "bf16-weights"])
def test_bf16_runs(tmp_path: Path, precision: str) -> None:
    """bf16 autocast, and bf16 weights with fp32 masters: the rollouts decode the bf16 model."""
    result, lines = run(rl_run(tmp_path, "b", {"kl_beta": 0.05}, extra={"max_steps": 2, "precision": precision}))
    assert result.reason == "completed" and any(precision.replace("-", " ") in line for line in lines)
    recs = records(result.run_dir, "train")
    assert all(r["rollout_tokens"] > 0 for r in recs) and abs(recs[0]["kl"]) < 1e-3


@pytest.mark.parametrize("bits", [4, 16])
def test_lora_on_a_quantized_base_with_adapters_off_reference(tmp_path: Path, bits: int) -> None:
    base = make_family("qwen2.5", tmp_path / "base")
    sections = {"model": {"from_pretrained": str(base), "lora": {"enabled": True, "r": 4, "base_bits": bits}},
                "tokenizer": {"kind": "pretrained", "path": str(base)}}
    result, lines = run(rl_run(tmp_path, "lora", {"kl_beta": 0.05}, extra={"max_steps": 2, "precision": "auto", "sequence_length_tokens": 96},
                               **sections))
    assert result.reason == "completed"
    assert any("KL reference: adapters disabled" in line for line in lines)
    assert abs(records(result.run_dir, "train")[0]["kl"]) < 1e-6


@pytest.mark.parametrize("change,message", [
    ({"rl": {"rewards": []}}, "train.rl.rewards is empty"),
    ({"rl": {"rewards": [{"function": "contains", "pattern": "x"}]}}, "has no option pattern"),
    ({"rl": {"rewards": [{"function": "mod:fn"}]}}, "allow_user_rewards"),
    ({"compile": True}, "compile: true does not apply"),
    ({"distributed": "fsdp"}, "FSDP"),
    ({"global_batch_size": 6, "micro_batch_size": 2}, "multiple of train.rl.group_size"),
])
def test_refusals(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    train_section = {**RL, **{k: v for k, v in change.items() if k != "rl"},
                     "rl": {**RL["rl"], **change.get("rl", {})}}
    cfg = make_run(tmp_path, name="x", prepared=False, data={"prompts_path": "p.jsonl"}, train=train_section,
                   model={"max_position_embeddings": 64})
    with pytest.raises(ConfigError, match=message):
        load_config(cfg, environ={})


def test_privacy_dp_refuses_rl(tmp_path: Path) -> None:
    cfg = make_run(tmp_path, name="x", prepared=False, data={"prompts_path": "p.jsonl"}, train=RL,
                   model={"max_position_embeddings": 64}, privacy={"dp": {"enabled": True, "noise_multiplier": 1.0}})
    with pytest.raises(ConfigError, match="privacy.dp does not cover train.task rl"):
        load_config(cfg, environ={})


@pytest.mark.slow
def test_two_processes_split_the_prompts(tmp_path: Path) -> None:
    """DDP: each rank samples its own prompts' groups; the step's metrics are over both ranks, the
    run completes and resumes at the same world size."""
    cfg = rl_run(tmp_path, "ddp", extra={"distributed": "ddp", "micro_batch_size": 4})
    out = llmkit("train", "--config", str(cfg), "--nproc-per-node", "2", "--stop-at-step", "3")
    assert out.returncode == 0, out.stderr[-3000:]
    again = llmkit("train", "--config", str(cfg), "--nproc-per-node", "2")
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp"
    recs = records(run_dir, "train")
    assert [r["step"] for r in recs] == list(range(1, 7))
    assert all(r["rollout_tokens"] > 0 and 0 <= r["zero_spread_groups"] <= 1 for r in recs)
    # 8 answers a step over 2 ranks: 1 prompt's group of 4 each; both ranks' first prompts are sampled
    samples = [json.loads(x) for x in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert {s["round"] for s in samples} == set(range(6))
    assert (run_dir / "final" / "model.safetensors").exists()
