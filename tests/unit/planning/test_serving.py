"""`llmkit plan --serve`: memory, the decode and prefill model, the choice of hardware, the CLI."""

from __future__ import annotations

import json

import pytest

from llmkit.config.load import validate_config
from llmkit.config.presets import load_preset
from llmkit.errors import ConfigError
from llmkit.planning.hardware import find_device
from llmkit.planning.memory import GB, kv_cache_bytes
from llmkit.planning.params import count_parameters
from llmkit.planning.serving import (GPU_DECODE_BANDWIDTH_EFFICIENCY, GPU_RUNTIME_BYTES, GPU_STEP_OVERHEAD_S, HEADROOM,
                                 LocalServer, StepSpeed, gpu_speed, request_rates, serve_plan)


def cfg_of(name: str, **updates):  # type: ignore[no-untyped-def]
    data = load_preset(name)
    for key, value in updates.items():
        data.setdefault(key, {}).update(value)
    return validate_config(data)


def test_batch_one_decode_on_a_gpu_reads_every_weight_once_per_token() -> None:
    cfg = cfg_of("llama-8b")
    h100 = find_device("H100-80GB")
    weights = 2 * count_parameters(cfg.model, 128256).matmul
    kv = kv_cache_bytes(cfg, 1000, 2)
    expected = (weights + kv) / (h100.bandwidth_gbs * 1e9 * GPU_DECODE_BANDWIDTH_EFFICIENCY) + GPU_STEP_OVERHEAD_S
    assert gpu_speed(cfg, "H100-80GB", 1).step_seconds(1, 1000) == pytest.approx(expected)
    # bandwidth-bound: 8 users cost about what one does; 4096 users turn it compute-bound
    one, eight = (gpu_speed(cfg, "H100-80GB", 1).step_seconds(b, 1000) for b in (1, 8))
    assert eight < 1.3 * one
    parts = gpu_speed(cfg, "H100-80GB", 1).breakdown(4096, 100)
    assert parts["compute"] > parts["memory"]
    # two devices split the weight reads
    assert gpu_speed(cfg, "H100-80GB", 2).step_seconds(1, 1000) < 0.7 * one  # less the all-reduces


def test_request_rates_follow_the_formula() -> None:
    speed = StepSpeed(lambda rows, span: 0.01 + 0.001 * rows, lambda tokens: 0.002 * tokens)
    step, aggregate, per_user, ttft = request_rates(speed, 4, 50, 100)
    assert step == pytest.approx(0.014) and ttft == pytest.approx(0.1)
    assert aggregate == pytest.approx(4 * 100 / (4 * 0.1 + 100 * 0.014))
    assert per_user == pytest.approx(aggregate / 4)


def test_more_users_share_a_step_more_tokens_in_all_fewer_each() -> None:
    cfg = cfg_of("llama-1b")
    rows = {c: serve_plan(cfg, c, 1.0, 2048, 512, ["L4-24GB"]).candidates for c in (1, 8, 32)}
    one = {c: next(x for x in rows[c] if x.num_devices == 1) for c in rows}
    assert one[1].tokens_per_s < one[8].tokens_per_s < one[32].tokens_per_s
    assert one[1].tokens_per_s_per_user > one[8].tokens_per_s_per_user > one[32].tokens_per_s_per_user


def test_memory_holds_weights_and_every_sequences_cache() -> None:
    cfg = cfg_of("llama-8b")
    plan = serve_plan(cfg, 64, 1.0, 8192, 1024, ["H100-80GB"])
    weights = 2 * count_parameters(cfg.model, 128256).total
    kv = 64 * kv_cache_bytes(cfg, 8192, 2)
    assert plan.weights_bytes["bf16"] == weights and plan.weights_bytes["fp32"] == 2 * weights
    for c in plan.candidates:
        assert c.memory_bytes_per_device == (weights + kv) // c.num_devices + GPU_RUNTIME_BYTES
        assert c.fits == (c.memory_bytes_per_device <= 80 * GB * HEADROOM)
    assert not next(c for c in plan.candidates if c.num_devices == 1).fits  # 16 GB + 69 GB of cache > 72 GB usable
    assert next(c for c in plan.candidates if c.num_devices == 2).fits


def test_the_recommendation_is_the_cheapest_that_serves_every_user_fast_enough() -> None:
    cfg = cfg_of("llama-8b")
    plan = serve_plan(cfg, 16, 30.0, 4096, 1024)
    best = plan.recommendations[0]
    assert best["fits"] and best["tokens_per_s_per_user"] >= 30.0
    meeting = [c for c in plan.candidates if c.meets and c.usd_per_hour is not None]
    assert meeting and best["usd_per_hour"] == pytest.approx(min(c.usd_per_hour for c in meeting), rel=0.05)
    assert best["usd_per_million_tokens"] == pytest.approx(best["usd_per_hour"] / (best["tokens_per_s"] * 3600) * 1e6)
    # an impossible speed: nothing is recommended
    assert serve_plan(cfg, 16, 1e6, 4096, 1024).recommendations == []


def test_this_machine_is_recommended_first_when_it_meets_the_need_and_skipped_when_ram_is_short() -> None:
    cfg = cfg_of("tiny")
    fast = StepSpeed(lambda rows, span: 0.002, lambda tokens: 0.01)
    plan = serve_plan(cfg, 4, 20.0, 256, 64, ["H100-80GB"], local=LocalServer("this-cpu", 16.0, "fp32", fast))
    assert plan.recommendations[0]["offering"] == "this machine" and plan.recommendations[0]["usd_per_hour"] == 0
    assert len(plan.recommendations) >= 2 and plan.recommendations[1]["offering"] != "this machine"
    big = cfg_of("llama-8b")
    plan = serve_plan(big, 1, 1.0, 2048, 64, ["H100-80GB"], local=LocalServer("this-cpu", 8.0, "fp32", None))
    mine = next(c for c in plan.candidates if c.offering == "this machine")
    assert not mine.fits and mine.tokens_per_s is None and plan.recommendations[0]["offering"] != "this machine"


def test_a_prompt_that_fills_the_context_or_a_context_beyond_the_model_is_refused() -> None:
    cfg = cfg_of("tiny")
    with pytest.raises(ConfigError, match="leaves no room"):
        serve_plan(cfg, 1, 1.0, 128, 128)
    with pytest.raises(ConfigError, match="longer than the model"):
        serve_plan(cfg, 1, 1.0, cfg.model.max_position_embeddings + 1, 10)


def test_cpu_serving_measurement_serves_a_replica_and_grows_with_batch_span_and_prompt() -> None:
    import gc
    import threading

    from llmkit.serving.speed import SPAN_CAP, measure_cpu_serving

    # 6 layers: the replica serves 4 (the model fits the cache), one layer timed alone stands for the rest
    speed = measure_cpu_serving(cfg_of("tiny", model={"num_hidden_layers": 6}), "fp32", sampled=True, budget_s=0.02)
    assert any(t.name == "plan-replica-server" for t in threading.enumerate())
    parts = speed.breakdown(8, 100)
    assert set(parts) == {"served replica", "more layers", "longer span"} and all(v >= 0 for v in parts.values())
    assert 0 < parts["more layers"] < parts["served replica"]  # 2 layers alone vs 4 with the head, sampling and HTTP
    assert speed.step_seconds(8, 100) == pytest.approx(sum(parts.values()))
    assert speed.step_seconds(8, 1000) > speed.step_seconds(8, 100)
    assert speed.longest_span
    # beyond the cap the span is extrapolated, never cheaper than at the cap
    assert speed.step_seconds(1, 4 * SPAN_CAP) >= speed.step_seconds(1, SPAN_CAP)
    assert 0 < speed.prefill_seconds(8) and speed.prefill_seconds(2048) > speed.prefill_seconds(256)
    del speed, parts
    gc.collect()  # the replica's server stops with the speed that timed it
    assert not any(t.name == "plan-replica-server" and t.is_alive() for t in threading.enumerate())


def test_without_the_serve_extra_the_replica_is_timed_through_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    import llmkit.serving.speed as measure

    monkeypatch.setattr(measure, "serve_extra", lambda: False)
    speed = measure.measure_cpu_serving(cfg_of("tiny"), "fp32", sampled=False, budget_s=0.02)
    assert set(speed.breakdown(4, 10)) == {"replica's engine"} and speed.step_seconds(4, 10) > 0
    assert speed.prefill_seconds(16) > 0
    note = speed.note()
    assert note is not None and "without its HTTP layer, as the `serve` extra is not installed" in note


def test_a_serving_plan_says_how_much_the_machine_varied_only_when_it_did() -> None:
    from types import SimpleNamespace

    from llmkit.serving.speed import _ServingTimer

    steady = SimpleNamespace(rounds={("step", 4): [0.0030, 0.0031, 0.0032], ("first token", 64): [0.010, 0.011]},
                             server=object())
    assert _ServingTimer.steadiness(steady) is None  # type: ignore[arg-type]
    shaky = SimpleNamespace(rounds={**steady.rounds, ("step", 16): [0.0059, 0.0090, 0.0070]}, server=object())
    line = _ServingTimer.steadiness(shaky)  # type: ignore[arg-type]
    assert line is not None and "step for 16 streams: 5.9-9.0 ms over 3 rounds" in line


def test_the_stand_in_tokenizer_has_the_ids_asked_for_and_each_plain_one_spells_text() -> None:
    from llmkit.serving.speed import stand_in_tokenizer

    tok = stand_in_tokenizer(9000)
    assert len(tok) == 9000
    texts = [tok.decode([i]) for i in range(len(tok) - 4)]
    assert all(t and t.isascii() and t.isprintable() for t in texts) and len(set(texts)) == len(texts)


def test_the_batch_span_is_the_longest_rows_for_llmkits_engine_and_the_mean_for_paged_attention() -> None:
    from llmkit.planning.serving import StepSpeed, _span

    shared = StepSpeed(lambda r, s: 0.0, lambda t: 0.0, longest_span=True)
    paged = StepSpeed(lambda r, s: 0.0, lambda t: 0.0)
    assert _span(paged, 16, 100, 200) == 200 and _span(shared, 1, 100, 200) == 200
    assert _span(shared, 16, 100, 200) == 100 + round(200 * 16 / 17)


def test_cli_plan_serve_recommends_this_machine_for_tiny_and_json_carries_the_same(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cli("init", "--preset", "tiny", "run.yaml", cwd=tmp_path)
    # 1 token/s per user: this machine serves that even while other processes load it (the test is
    # about the recommendation, not about this machine's speed at the moment it runs)
    slow = ("--tokens-per-s-per-user", "1")
    out = cli("plan", "--config", "run.yaml", "--serve", "--concurrency", "4", "--context", "128", *slow, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    first = next(line for line in out.stdout.splitlines() if line.strip().startswith("recommended:"))
    assert "this-cpu" in first and "$0 (this machine)" in first, out.stdout
    assert "serving 4 user(s) at 1 tokens/s each, 128-token sequences (64 prompt + 64 generated)" in out.stdout
    data = json.loads(cli("plan", "--config", "run.yaml", "--serve", "--concurrency", "4", "--context", "128", *slow,
                          "--device", "L4-24GB", "--json", cwd=tmp_path).stdout)
    assert data["concurrency"] == 4 and data["context"] == 128 and data["prompt_tokens"] == 64
    assert data["recommendations"][0]["offering"] == "this machine"
    assert {c["device"] for c in data["candidates"]} == {"L4-24GB", "this-cpu"}
    table = cli("plan", "--config", "run.yaml", "--serve", "--all", "--no-this-machine", "--device", "L4-24GB",
                cwd=tmp_path)
    assert table.returncode == 0 and table.stdout.count("L4-24GB") >= 4  # 1, 2, 4, 8 devices


def test_cli_serve_options_without_serve_and_training_limits_with_it_are_refused(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cli("init", "--preset", "tiny", "run.yaml", cwd=tmp_path)
    out = cli("plan", "--config", "run.yaml", "--concurrency", "8", cwd=tmp_path)
    assert out.returncode == 2 and "--concurrency only apply to a serving plan" in out.stderr
    out = cli("plan", "--config", "run.yaml", "--serve", "--budget-usd", "10", cwd=tmp_path)
    assert out.returncode == 2 and "size a training run" in out.stderr
