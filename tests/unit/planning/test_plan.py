"""The planner: exact parameter counts, sane fits, limits, unknown devices, no torch at import."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from llmkit.config.load import validate_config
from llmkit.config.presets import list_presets, load_preset
from llmkit.errors import ConfigError, UsageError
from llmkit.model.build import build_model
from llmkit.planning.hardware import find_device, offerings
from llmkit.planning.memory import GB, training_memory
from llmkit.config.derived import lora_parameters, vocab_size
from llmkit.planning.params import count_parameters
from llmkit.planning.recommend import make_plan


def preset(name: str, **updates):  # type: ignore[no-untyped-def]
    data = load_preset(name)
    for key, value in updates.items():
        data.setdefault(key, {}).update(value)
    return validate_config(data)


@pytest.mark.parametrize("name", ["tiny", "gpt2-124m", "llama-1b", "llama-8b"])
def test_parameter_counts_equal_the_instantiated_hf_models(name: str) -> None:
    cfg = preset(name)
    with torch.device("meta"):  # no memory: just the shapes
        model = build_model(cfg.model, vocab_size(cfg), 0, None, seed=0)
    assert count_parameters(cfg.model, vocab_size(cfg)).total == sum(p.numel() for p in model.parameters())


def test_known_sizes() -> None:
    assert count_parameters(preset("gpt2-124m").model, 50257).total == 124_439_808
    assert count_parameters(preset("llama-8b").model, 128256).total == 8_030_261_248
    assert count_parameters(preset("llama-1b").model, 128256).total == 1_235_814_400


def test_8b_full_finetune_does_not_fit_one_80gb_gpu_but_lora_does() -> None:
    full = make_plan(preset("llama-8b"), ["H100-80GB"], counts=(1,))
    assert not full.candidates[0].fits and full.suggestions
    assert any("LoRA" in s for s in full.suggestions) and any("FSDP" in s for s in full.suggestions)
    lora = make_plan(preset("lora/llama-8b"), ["H100-80GB"], counts=(1,))
    assert lora.candidates[0].fits
    sharded = make_plan(preset("llama-8b"), ["H100-80GB"], counts=(8,))
    assert sharded.candidates[0].fits and sharded.candidates[0].cost_usd > 0


def test_memory_grows_with_batch_and_shrinks_with_checkpointing_and_sharding() -> None:
    cfg = preset("llama-1b")
    a, b = training_memory(cfg, 1), training_memory(cfg, 4)
    assert b.activations_bytes == 4 * a.activations_bytes
    # the chunked loss holds one chunk of logits (plus gradients that grow with the tokens); FSDP,
    # which sees the whole micro-batch's logits, grows with the batch
    assert a.logits_bytes < b.logits_bytes < 1.2 * a.logits_bytes
    full = [training_memory(cfg, n, num_devices=8, sharded=True).logits_bytes for n in (1, 4)]
    assert full[1] == 4 * full[0] and full[1] > 4 * b.logits_bytes
    ckpt = training_memory(preset("llama-1b", train={"gradient_checkpointing": True}), 4)
    assert ckpt.activations_bytes < b.activations_bytes / 4
    fsdp = training_memory(cfg, 4, num_devices=8, sharded=True)
    assert fsdp.optimizer_bytes == b.optimizer_bytes // 8
    assert 10 * GB < b.peak_bytes < 60 * GB


def test_budget_and_deadline_order_the_candidates() -> None:
    plan = make_plan(preset("gpt2-124m"), ["H100-80GB", "A100-80GB"], budget_usd=1e6, deadline_hours=2)
    best = plan.candidates[0]
    assert best.fits and best.hours <= 2 and best.cost_usd is not None
    impossible = make_plan(preset("gpt2-124m"), ["H100-80GB"], budget_usd=0.01)
    assert impossible.candidates[0].cost_usd > 0.01  # nothing meets it; the nearest comes first


def test_unknown_device_lists_close_matches() -> None:
    with pytest.raises(UsageError, match="unknown device") as info:
        find_device("H1OO")
    assert "H100-80GB" in str(info.value)
    assert find_device("h100").name == "H100-80GB"
    assert all(o.on_demand_usd_h > 0 for o in offerings())


def test_plan_modules_do_not_import_torch() -> None:
    code = ("import sys; import llmkit.planning.recommend, llmkit.planning.memory, llmkit.planning.hardware;"
            "assert 'torch' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_cli_plan(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cli("init", "--preset", "llama-8b", "run.yaml", cwd=tmp_path)
    out = cli("plan", "--config", "run.yaml", "--device", "H100-80GB", "--all", "--no-this-machine", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "8,030.3 M parameters" in out.stdout and "NO" in out.stdout
    out = cli("plan", "--config", "run.yaml", "--device", "H1OO", cwd=tmp_path)
    assert out.returncode == 2 and "closest known: H100-80GB" in out.stderr
    out = cli("plan", "--config", "run.yaml", "--json", cwd=tmp_path)
    assert out.returncode == 0 and '"candidates"' in out.stdout


def test_train_micro_batch_auto_and_the_fit_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmkit import device
    from llmkit.training import setup

    cfg = preset("tiny", train={"micro_batch_size": "auto", "global_batch_size": 16})
    cpu = torch.device("cpu")
    need = {mb: training_memory(cfg, mb, "fp32", device_kind="cpu").peak_bytes for mb in (1, 2, 4, 8, 16)}
    monkeypatch.setattr(device, "memory_budget_bytes", lambda device: need[4] + 1)
    lines: list[str] = []
    assert setup.micro_batch(cfg, cpu, "fp32", lines.append) == 4
    assert "auto -> 4" in lines[0]
    fixed = preset("tiny", train={"micro_batch_size": 16, "global_batch_size": 16})
    lines.clear()
    assert setup.micro_batch(fixed, cpu, "fp32", lines.append) == 16
    assert lines and "expect an out-of-memory error" in lines[0]


def _rates(gemm: float = 1e11, attention: float = 0.01, loss: float = 0.02, bandwidth: float = 1e10):  # type: ignore[no-untyped-def]
    from llmkit.planning.compute import Rates

    return Rates(lambda g: gemm, lambda a: attention, lambda t, v: loss, bandwidth, "cpu")


def test_step_time_components() -> None:
    from llmkit.planning.compute import (ELEMENTWISE_EFFICIENCY, FUSED_OPTIMIZER_BYTES_PER_PARAM,
                                     MASTER_COPY_BYTES_PER_PARAM, elementwise_bytes, forward_gemms, step_breakdown,
                                     step_seconds)
    from llmkit.planning.compute import flops_per_token

    cfg = preset("tiny")
    tokens = 8 * cfg.train.sequence_length_tokens
    forward = sum(g.flops for g in forward_gemms(cfg, 8))
    n = count_parameters(cfg.model, vocab_size(cfg)).non_embedding + 192 * 4096  # matmul weights incl. the head
    assert abs(forward - 2 * n * tokens) / forward < 0.05  # 2N per token (attention is separate)
    full = flops_per_token(n, n, 4, 192, 256) * tokens
    assert 0.8 < 3 * forward / full < 1.0  # the 6N + attention count minus the attention part

    parts = step_breakdown(cfg, 8, _rates(), "bf16")
    bw = 1e10 * ELEMENTWISE_EFFICIENCY["cpu"]
    assert parts["gemm"] == pytest.approx(3 * forward / 1e11)
    assert parts["attention"] == pytest.approx(0.01 * 4)  # one call per layer
    assert parts["loss"] == pytest.approx(0.02)
    assert parts["elementwise"] == pytest.approx(elementwise_bytes(cfg, 8, "bf16") / bw)
    total = count_parameters(cfg.model, 4096).total
    # fused AdamW on the fp32 masters, and the copies between them and the bf16 weights (auto on a CPU)
    per_param = FUSED_OPTIMIZER_BYTES_PER_PARAM + MASTER_COPY_BYTES_PER_PARAM
    assert parts["optimizer"] == pytest.approx(per_param * total / bw)
    fp32 = step_breakdown(preset("tiny", train={"precision": "fp32"}), 8, _rates(), "fp32")
    assert fp32["optimizer"] == pytest.approx(FUSED_OPTIMIZER_BYTES_PER_PARAM * total / bw)
    assert step_seconds(cfg, 8, _rates(), "bf16") == pytest.approx(sum(parts.values()))
    # gradient accumulation repeats everything but the optimizer step
    acc = step_breakdown(cfg, 8, _rates(), "bf16", accumulation=4)
    assert acc["gemm"] == pytest.approx(4 * parts["gemm"]) and acc["optimizer"] == parts["optimizer"]

    ckpt = step_breakdown(preset("tiny", train={"gradient_checkpointing": True}), 8, _rates(), "bf16")
    assert ckpt["gemm"] == pytest.approx(4 * forward / 1e11)  # the forward once more
    assert ckpt["attention"] == pytest.approx(parts["attention"] * 4 / 3)
    assert ckpt["elementwise"] > parts["elementwise"]
    lora_cfg = preset("tiny", model={"from_pretrained": "base", "lora": {"enabled": True}})
    lora = step_breakdown(lora_cfg, 8, _rates(), "bf16")
    # the optimizer touches only the adapters: r x (in + out) per adapted projection, counted exactly
    share = lora_parameters(lora_cfg.model) / count_parameters(cfg.model, 4096).total
    # (LoRA keeps fp32 weights under autocast: no master copies)
    assert lora["gemm"] < parts["gemm"] and lora["optimizer"] == pytest.approx(fp32["optimizer"] * share)

    # elementwise work is linear in tokens; the chunked loss's casts are timed in the loss, so
    # autocast and fp32 count the same bytes; bf16 weights' blocks move fewer (bf16 activations)
    assert elementwise_bytes(cfg, 16, "bf16") == 2 * elementwise_bytes(cfg, 8, "bf16")
    autocast_cfg = preset("tiny", train={"precision": "bf16"})
    assert elementwise_bytes(autocast_cfg, 8, "fp32") == elementwise_bytes(autocast_cfg, 8, "bf16")
    assert elementwise_bytes(cfg, 8, "bf16") < elementwise_bytes(autocast_cfg, 8, "bf16")
    dp_cfg = preset("tiny", train={"precision": "fp32", "task": "sft"}, privacy={"dp": {"enabled": True, "noise_multiplier": 1.0}},
                    data={"sft_path": "x.jsonl", "sft_packing": False})
    assert elementwise_bytes(dp_cfg, 8, "bf16") == elementwise_bytes(dp_cfg, 8, "fp32") + tokens * 12 * 4096


def test_cpu_rates_are_measured() -> None:
    from llmkit.planning.compute import Attention, Gemm
    from llmkit.planning.measure import measure_cpu_rates

    rates = measure_cpu_rates("fp32")
    small, large = rates.gemm(Gemm(8, 8, 8, 1)), rates.gemm(Gemm(512, 512, 512, 1))
    assert 0 < small < large  # tiny matrices run far below the large ones' rate
    assert rates.gemm(Gemm(8, 8, 8, 3)) == small  # cached per shape, whatever the count
    short, long = rates.attention_seconds(Attention(1, 2, 32, 16)), rates.attention_seconds(Attention(2, 4, 512, 32))
    assert 0 < short < long
    assert 0 < rates.cross_entropy_seconds(16, 64) < rates.cross_entropy_seconds(1024, 2048)
    assert 1e8 < rates.bandwidth_bytes_s < 1e13 and rates.device_kind == "cpu"
    # the steadiness probe: once at the start, again after each GEMM shape measured (two here)
    assert len(rates.probes) == 3 and all(p > 1e8 for p in rates.probes)


def test_a_plan_says_how_much_the_machine_varied_only_when_it_did() -> None:
    from llmkit.planning.compute import steadiness

    assert steadiness([200e9], "x") is None and steadiness([200e9, 210e9, 205e9], "x") is None  # within a tenth
    line = steadiness([205e9, 240e9, 230e9], "bf16 512x512 products")
    assert line is not None and "205-240 GFLOP/s over 3 probes (bf16 512x512 products)" in line


def test_interconnect_8bit_adam_and_serving_memory() -> None:
    from llmkit.planning.recommend import scaling_efficiency

    h100, l40s, rtx = find_device("H100-80GB"), find_device("L40S-48GB"), find_device("RTX4090-24GB")
    assert scaling_efficiency(h100, 1) == scaling_efficiency(rtx, 1) == 1.0
    for n in (2, 4, 8):
        assert scaling_efficiency(rtx, n) < scaling_efficiency(l40s, n) < scaling_efficiency(h100, n)
    cfg = preset("llama-8b")
    eight_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"optimizer": "adamw_8bit"})})
    full, eight = training_memory(cfg, 1, "bf16"), training_memory(eight_cfg, 1, "bf16")
    assert eight.optimizer_bytes * 4 == full.optimizer_bytes and eight.gradients_bytes == full.gradients_bytes
    serving = make_plan(cfg, ["H100-80GB"]).serving
    # Llama 3 8B: 32 layers x 8 KV heads x 128 dims x (K and V) x 2 bytes = 128 KiB per token
    assert serving["kv_bytes_per_token"] == 32 * 8 * 128 * 2 * 2 == 128 * 1024
    assert serving["kv_bytes_per_sequence"] == 128 * 1024 * cfg.model.max_position_embeddings


def test_no_sharding_keeps_the_whole_model_on_every_device(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = preset("llama-8b")
    plan = make_plan(cfg, ["H100-80GB"], counts=(1, 8), sharding=False)
    assert not any(c.fits for c in plan.candidates) and not any(c.sharded for c in plan.candidates)
    assert plan.candidates[0].memory == plan.candidates[1].memory  # plain data parallelism: no saving
    assert any("FSDP over" in s and "plan.sharding: true" in s for s in plan.suggestions)
    cli("init", "--preset", "llama-8b", "run.yaml", cwd=tmp_path)
    out = cli("plan", "--config", "run.yaml", "--device", "H100-80GB", "--no-sharding", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "nothing fits on any device count without sharding" in out.stdout
    assert "to make it fit: LoRA" in out.stdout and "FSDP over" in out.stdout
    out = cli("plan", "--config", "run.yaml", "--device", "H100-80GB", "--devices", "8", "--all", cwd=tmp_path)
    assert out.returncode == 0 and "H100-80GB        8 yes" in out.stdout and "H100-80GB        1" not in out.stdout


def test_cli_plan_this_machine(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cli("init", "--preset", "tiny", "run.yaml", cwd=tmp_path)
    out = cli("plan", "--config", "run.yaml", "--this-machine", "--device", "H100-80GB", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import json

    data = json.loads(out.stdout)
    local = [c for c in data["candidates"] if c["device"] == "this-cpu"]
    assert len(local) == 1 and local[0]["fits"] and local[0]["hours"] > 0 and local[0]["offering"] == "this machine"
    assert len(data["machine_probes"]) >= 3 and "machine_note" in data
    out = cli("plan", "--config", "run.yaml", "--adam-8bit", "--no-this-machine", "--device", "H100-80GB", "--json",
              cwd=tmp_path)
    same = cli("plan", "--config", "run.yaml", "--set", "train.optimizer=adamw_8bit", "--no-this-machine",
               "--device", "H100-80GB", "--json", cwd=tmp_path)
    assert out.returncode == 0 and json.loads(out.stdout) == json.loads(same.stdout)  # one setting, two spellings
    eight, full = json.loads(out.stdout)["memory_at_config_micro_batch"], None
    full = json.loads(cli("plan", "--config", "run.yaml", "--no-this-machine", "--device", "H100-80GB", "--json",
                          cwd=tmp_path).stdout)["memory_at_config_micro_batch"]
    assert eight["optimizer_bytes"] * 4 == full["optimizer_bytes"]


def test_plan_rows_shard_exactly_when_train_would() -> None:
    """One rule (plan.memory.shards) for plan's n > 1 rows and train's wrapper choice."""
    from llmkit.planning.memory import shards
    from llmkit.training.distributed import Dist, choose_wrapper

    big = preset("llama-8b")  # 8B: weights + grads + AdamW ~ 128 GB, more than one 80 GB GPU
    small = preset("gpt2-124m")
    h100 = find_device("H100-80GB")
    budget = h100.memory_gb * GB * 0.9
    assert shards(big, 8, budget, "bf16") and not shards(small, 8, budget, "bf16")
    assert not shards(big, 1, budget, "bf16")  # one device: nothing to shard over
    assert shards(preset("gpt2-124m", train={"distributed": "fsdp"}), 8, budget, "bf16")
    assert not shards(preset("llama-8b", train={"distributed": "ddp"}), 8, budget, "bf16")
    rows = {(c.device, c.num_devices): c for c in make_plan(big, ["H100-80GB"]).candidates}
    assert rows[("H100-80GB", 8)].sharded and not rows[("H100-80GB", 1)].sharded
    assert not any(c.sharded for c in make_plan(small, ["H100-80GB"]).candidates)
    two = Dist(world_size=2, backend="gloo")
    assert choose_wrapper(big, two, int(budget), "bf16", "gpu") == "fsdp"
    assert choose_wrapper(small, two, int(budget), "bf16", "gpu") == "ddp"
    assert choose_wrapper(small, Dist(), int(budget), "bf16", "gpu") == "none"


def test_data_parallel_step_model() -> None:
    from llmkit.planning.compute import data_parallel_step_seconds

    assert data_parallel_step_seconds(1.0, 4, 0.1) == pytest.approx(0.35)
    assert data_parallel_step_seconds(1.0, 2, 0.1, shares_cores=True) == pytest.approx(1.1)


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_no_row_has_more_data_parallel_ranks_than_the_global_batch_allows(preset: str) -> None:
    cfg = validate_config(load_preset(preset))
    batch = cfg.train.global_batch_size
    plan = make_plan(cfg)
    assert plan.candidates
    for c in plan.candidates:
        assert c.num_devices <= batch and batch % c.num_devices == 0, (preset, c.device, c.num_devices, batch)


def test_an_impossible_device_count_is_refused_with_the_counts_that_work() -> None:
    cfg = validate_config({**load_preset("tiny"), "plan": {"num_devices": 64}})
    with pytest.raises(ConfigError, match="64 devices cannot train a global batch of 16") as err:
        make_plan(cfg, counts=(64,))
    assert "1, 2, 4, 8, 16" in err.value.fix


def test_tiny_recommends_this_machine_in_minutes_and_small_cloud_jobs_cost_their_minimum(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    cli("init", "--preset", "tiny", "run.yaml", cwd=tmp_path)
    out = cli("plan", "--config", "run.yaml", cwd=tmp_path)  # this machine is a candidate by default
    assert out.returncode == 0, out.stderr
    first = next(line for line in out.stdout.splitlines() if line.strip().startswith("recommended:"))
    assert "this-cpu" in first and re.search(r"\d+ min, \$0 \(this machine\)", first), out.stdout
    data = json.loads(cli("plan", "--config", "run.yaml", "--json", cwd=tmp_path).stdout)
    assert data["recommendations"][0]["offering"] == "this machine"
    for c in data["candidates"]:
        if c["offering"] not in (None, "this machine"):  # a minute's work still pays boot, image, setup and the billing minimum
            assert c["startup_hours"] > 0.1 and c["cost_usd"] > 0.01, c


def test_llama_8b_recommendation_is_feasible_and_pays_start_up_and_billing() -> None:
    import math

    from llmkit.planning.hardware import cloud_terms, offerings
    from llmkit.planning.recommend import startup_seconds

    cfg = validate_config(load_preset("llama-8b"))
    plan = make_plan(cfg)
    best = plan.recommendations[0]
    batch = cfg.train.global_batch_size
    assert best["fits"] and batch % best["num_devices"] == 0
    cloud, count, instance = best["offering"].split()[0], int(best["offering"].split()[1].rstrip("x")), best["offering"].split()[2]
    rate = next(o.on_demand_usd_h for o in offerings() if o.cloud == cloud and o.instance == instance) * count
    seconds = best["hours"] * 3600 + startup_seconds(cfg, cloud)
    inc = cloud_terms(cloud).billing_increment_s
    assert best["startup_hours"] * 3600 == pytest.approx(startup_seconds(cfg, cloud))
    assert best["cost_usd"] == pytest.approx(rate * math.ceil(seconds / inc) * inc / 3600)
    assert best["cost_usd"] > rate * best["hours"]


def test_user_prices_replace_llmkits_and_old_prices_are_warned_about(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import yaml

    from llmkit.planning import hardware

    table = yaml.safe_load((hardware.DATA / "prices.yaml").read_text())
    table["date"] = "2020-01"
    table["offerings"] = [{**o, "on_demand_usd_h": o["on_demand_usd_h"] * 10} for o in table["offerings"]]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(table))
    cli("init", "--preset", "llama-8b", "run.yaml", cwd=tmp_path)
    base = json.loads(cli("plan", "--config", "run.yaml", "--json", "--no-this-machine", cwd=tmp_path).stdout)
    mine = cli("plan", "--config", "run.yaml", "--json", "--no-this-machine", "--prices", "mine.yaml", cwd=tmp_path)
    assert mine.returncode == 0, mine.stderr
    costs = {(c["device"], c["num_devices"]): c["cost_usd"] for c in base["candidates"] if c["cost_usd"]}
    for c in json.loads(mine.stdout)["candidates"]:
        if c["cost_usd"]:
            assert c["cost_usd"] == pytest.approx(10 * costs[(c["device"], c["num_devices"])], rel=0.02)
    shown = cli("plan", "--config", "run.yaml", "--no-this-machine", "--prices", "mine.yaml", cwd=tmp_path)
    assert "list prices of 2020-01" in shown.stdout and "days old; pass --prices FILE" in shown.stderr
    (tmp_path / "bad.yaml").write_text("offerings: []\n")
    bad = cli("plan", "--config", "run.yaml", "--prices", "bad.yaml", cwd=tmp_path)
    assert bad.returncode == 2 and "cannot use bad.yaml as a price list" in bad.stderr


def test_spot_rows_pay_the_expected_rework_of_reclaims() -> None:
    from llmkit.planning.recommend import wall_hours

    rare = preset("llama-8b", train={"checkpoint_every_steps": 50})
    often = preset("llama-8b", train={"checkpoint_every_steps": 5000})
    spot_rare = {(c.device, c.num_devices): c for c in make_plan(rare, ["H100-80GB"], spot=True).candidates}
    spot_often = {(c.device, c.num_devices): c for c in make_plan(often, ["H100-80GB"], spot=True).candidates}
    on_demand = {(c.device, c.num_devices): c for c in make_plan(rare, ["H100-80GB"]).candidates}
    key = ("H100-80GB", 8)
    assert on_demand[key].preemption_hours == 0
    assert 0 < spot_rare[key].preemption_hours < spot_often[key].preemption_hours  # more steps lost per reclaim
    assert wall_hours(spot_often[key]) > wall_hours(on_demand[key])
    # the rework is billed: the spot cost is more than the spot rate times the on-demand wall time
    assert spot_often[key].cost_usd > spot_rare[key].cost_usd


def test_a_pretrained_model_plans_with_its_own_shape_and_its_base_bits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The config's model.* numbers are the tiny defaults; the model directory's config.json is
    an 8B llama: the plan is the 8B's. A 4-bit base holds at most 0.3x the fp32 base's bytes."""
    import json

    from llmkit.planning.entry import plan_training

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 131072,
        "tie_word_embeddings": False}))
    base = validate_config({"name": "t", "model": {"from_pretrained": str(tmp_path), "lora": {"enabled": True, "r": 16}},
                            "tokenizer": {"kind": "pretrained"},
                            "train": {"task": "sft", "sequence_length_tokens": 2048, "global_batch_size": 32,
                                      "micro_batch_size": 4, "gradient_checkpointing": True}})
    plans = {}
    for bits in (32, 16, 4):
        cfg = base.model_copy(update={"model": base.model.model_copy(update={
            "lora": base.model.lora.model_copy(update={"base_bits": bits})})})
        plans[bits] = plan_training(cfg, ["RTX4090-24GB"], measure_this_machine=False)
    assert 8.0e9 < plans[32].parameters < 8.1e9  # Llama 3.1 8B's 8,030 M, not the config's tiny shape
    w = {bits: p.memory_at_config_micro_batch["weights_bytes"] for bits, p in plans.items()}
    assert w[4] <= 0.3 * w[32] and w[16] < 0.55 * w[32]
    fits = {bits: any(c.fits for c in p.candidates if c.num_devices == 1) for bits, p in plans.items()}
    assert fits == {32: False, 16: False, 4: True}
