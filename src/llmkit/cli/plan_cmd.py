"""`llmkit plan`: will it fit, how long, what will it cost."""

from __future__ import annotations

import json
from typing import Any
from pathlib import Path

import typer

from llmkit.cli.options import Cloud, SetOpt

from llmkit.planning.entry import DEFAULT_TOKENS_PER_USER


def register(app: typer.Typer) -> None:
    """Add `plan` to the app."""
    app.command("plan")(plan)


def plan(
    config: Path = typer.Option(..., "--config", "-c", help="Run config YAML file."),
    overrides: list[str] = SetOpt,
    device: list[str] = typer.Option([], "--device", help="Candidate device (repeatable; default: plan.devices or all)."),
    budget_usd: float = typer.Option(None, "--budget-usd", help="Most the run may cost."),
    deadline_hours: float = typer.Option(None, "--deadline-hours", help="Longest the run may take."),
    cloud: Cloud = typer.Option(None, "--cloud", help="Price offerings from this cloud only."),
    spot: bool = typer.Option(None, "--spot/--on-demand", help="Spot or on-demand prices."),
    num_devices: int = typer.Option(None, "--devices", min=1, help="Plan on exactly this many devices "
                                    "(default: plan.num_devices, or compare 1 to 64)."),
    sharding: bool = typer.Option(None, "--sharding/--no-sharding", help="Allow FSDP over several devices "
                                  "(default: plan.sharding, true)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    top: int = typer.Option(12, "--top", help="Candidates shown with --all."),
    show_all: bool = typer.Option(False, "--all", help="Show the table of candidates, not only the recommendations."),
    this_machine: bool = typer.Option(None, "--this-machine/--no-this-machine",
                                      help="This machine's CPU as a candidate, timed by measuring its matmul, "
                                           "attention, loss and memory speeds (~3 s). Default: on where torch is "
                                           "installed, unless --devices asks for a device count."),
    prices: Path = typer.Option(None, "--prices", help="Your own price list (the schema of llmkit's "
                                "planning/data/prices.yaml) instead of llmkit's."),
    adam_8bit: bool = typer.Option(False, "--adam-8bit", help="Plan with train.optimizer: adamw_8bit "
                                   "(bitsandbytes' 8-bit AdamW states); the same as --set train.optimizer=adamw_8bit."),
    serve: bool = typer.Option(False, "--serve", help="Plan serving the model instead of training it: memory, "
                               "decode and prefill speed, the cheapest hardware that serves every user fast enough."),
    concurrency: int = typer.Option(None, "--concurrency", min=1, help="--serve: users generating at once "
                                    "(default: serve.max_batch_size)."),
    tokens_per_user: float = typer.Option(None, "--tokens-per-s-per-user", min=0.0,
                                          help=f"--serve: tokens/s each user must get (default {DEFAULT_TOKENS_PER_USER:g})."),
    context: int = typer.Option(None, "--context", min=2, help="--serve: tokens per sequence, prompt and completion "
                                "(default: model.max_position_embeddings)."),
    prompt_tokens: int = typer.Option(None, "--prompt-tokens", min=1, help="--serve: tokens of each prompt "
                                      "(default: half the context)."),
) -> None:
    """Memory breakdown, fit per device, time and cost per candidate, cheapest that meet the limits."""
    from llmkit.config.load import load_config
    from llmkit.errors import UsageError

    serve_only = {"--concurrency": concurrency, "--tokens-per-s-per-user": tokens_per_user, "--context": context,
                  "--prompt-tokens": prompt_tokens}
    given = [k for k, v in serve_only.items() if v is not None]
    if given and not serve:
        raise UsageError(f"{', '.join(given)} only apply to a serving plan", "without --serve, plan sizes training",
                         "add --serve, or leave out " + ", ".join(given))
    if serve and (budget_usd is not None or deadline_hours is not None or num_devices is not None or adam_8bit
                  or sharding is not None):
        raise UsageError("--budget-usd, --deadline-hours, --devices, --sharding and --adam-8bit size a training run",
                         "a serving plan asks for users and tokens/s instead",
                         "use --concurrency and --tokens-per-s-per-user with --serve")

    sets = list(overrides)
    for key, value in (("plan.budget_usd", budget_usd), ("plan.deadline_hours", deadline_hours),
                       ("plan.cloud", cloud.value if cloud else None), ("plan.spot", spot), ("plan.num_devices", num_devices),
                       ("plan.sharding", sharding), ("train.optimizer", "adamw_8bit" if adam_8bit else None)):
        if value is not None:
            sets.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    cfg = load_config(config, sets)
    if serve:
        from llmkit.serving.plan import plan_serving

        served = plan_serving(cfg, concurrency, tokens_per_user, context, prompt_tokens, list(device) or None,
                              this_machine, prices, note=_note)
        if as_json:
            typer.echo(json.dumps(served.to_json(), indent=2))
        else:
            _print_serve_plan(cfg, served, show_all, top)
        return
    from llmkit.planning.entry import plan_training

    result = plan_training(cfg, list(device) or None, this_machine, prices, note=_note)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    _print_plan(cfg, config, result, prices, show_all, top)


def _note(line: str) -> None:
    typer.echo(line, err=True)


def _preference_line(cfg: Any) -> str:
    """How the plan counts a preference run: two sequences a pair, and the reference model."""
    from llmkit.planning.entry import reference_kind

    kind = reference_kind(cfg)
    what = {"none": "no reference model (the loss has none)",
            "precomputed": "the reference's log-probabilities computed once before step 1 (one forward pass over "
                           "the data, not counted per step)",
            "adapters_off": "the reference is the model with its adapters disabled: no second copy, a forward pass "
                            "a step (+1/3 compute; its logits counted as reference)",
            "copy": "the reference is a frozen copy of the weights (counted as reference, with its logits) and a "
                    "forward pass a step (+1/3 compute); precompute_reference: auto precomputes instead when it "
                    "does not fit"}[kind]
    return (f"preference ({cfg.train.preference.loss}): the batch counts pairs, two sequences each; {what}")


def _rl_line(cfg: Any) -> str:
    """How the plan counts an RL run: answers, their sampling, the KV cache and the reference."""
    from llmkit.planning.entry import GB, kv_cache_bytes, reference_kind, rollout_rows

    rl, rows = cfg.train.rl, rollout_rows(cfg)
    kv = rows * kv_cache_bytes(cfg, cfg.train.sequence_length_tokens, 2)
    ref = {"none": "no KL reference", "copy": "a frozen copy of the weights as the KL reference (+1/3 compute)",
           "adapters_off": "the KL reference is the model with its adapters disabled (+1/3 compute)"}[reference_kind(cfg)]
    return (f"rl ({rl.loss}): the batch counts answers ({rl.group_size} a prompt); a generation samples {rows} answers "
            f"together every {rl.steps_per_generation} step(s): KV cache {kv / GB:.3f} GB (counted as rollout where it "
            f"exceeds the training activations), sampling counted as a forward pass; {ref}")


def _print_plan(cfg: Any, config: Path, result: Any, prices: Path | None, show_all: bool, top: int) -> None:
    """The training plan in words."""
    from llmkit.planning.entry import GB, human_hours, human_usd, prices_age_days, wall_hours

    p = cfg.plan
    typer.echo(f"{cfg.name}: {result.parameters / 1e6:,.1f} M parameters ({result.trainable_parameters / 1e6:,.1f} M "
               f"trainable), {result.tokens / 1e9:.3g} B tokens, {result.flops:.3g} FLOPs")
    mem = result.memory_at_config_micro_batch
    typer.echo(f"memory per device at the config's micro-batch {result.config_micro_batch} (bf16, 1 device): " + ", ".join(
        f"{k.removesuffix('_bytes')} {v / GB:.2f} GB" for k, v in mem.items() if v) + f"; peak {sum(mem.values()) / GB:.2f} GB")
    if cfg.train.task == "preference":
        typer.echo(_preference_line(cfg))
    if cfg.train.task == "rl":
        typer.echo(_rl_line(cfg))
    written, age = prices_age_days()
    if show_all:
        typer.echo(f"{'device':14} {'n':>3} {'fits':5} {'micro':>5} {'peak GB':>8} {'train':>9} {'start-up':>9} "
                   f"{'cost':>9}  offering")
        for c in result.candidates[:top]:
            peak = sum(c.memory.values()) / GB
            start = human_hours(c.startup_hours) if c.startup_hours else "-"
            typer.echo(f"{c.device:14} {c.num_devices:3d} {'yes' if c.fits else 'NO':5} {c.micro_batch or '-':>5} "
                       f"{peak:8.1f} {human_hours(c.hours):>9} {start:>9} {human_usd(c.cost_usd):>9}  "
                       f"{c.offering or 'no price listed'}")
    for r in result.recommendations:
        start = f" + {human_hours(r['startup_hours'])} start-up" if r["startup_hours"] else ""
        if r["preemption_hours"]:
            start += f" + {human_hours(r['preemption_hours'])} expected spot rework"
        cost = "$0" if r["offering"] == "this machine" else human_usd(r["cost_usd"])
        typer.echo(f"{'recommended' if r is result.recommendations[0] else 'or':>11}: {r['num_devices']} x {r['device']}, "
                   f"{human_hours(r['hours'])}{start}, {cost} ({r['offering']}) - {r['why']}")
    local_rows = [c for c in result.candidates if c.offering == "this machine"]
    if local_rows and not any(r["offering"] == "this machine" for r in result.recommendations):
        c = local_rows[0]
        typer.echo(f"this machine: {'does not fit (RAM)' if not c.fits else human_hours(c.hours)}"
                   + ("" if not c.fits else " - not recommended: it misses the limits" if (p.budget_usd or p.deadline_hours)
                      else " - not recommended: longer than a day (give --deadline-hours to allow it)"))
    if result.machine_note:
        typer.echo(f"note: {result.machine_note}")
    if not result.recommendations:
        priced = [c for c in result.candidates if c.fits and c.cost_usd is not None]
        if priced and (p.budget_usd or p.deadline_hours):
            near = min(priced, key=lambda c: c.cost_usd or 0)
            typer.echo(f"nothing meets the limits; nearest: {near.num_devices} x {near.device}, "
                       f"{human_hours(wall_hours(near))}, {human_usd(near.cost_usd)}"
                       + (f" (budget {human_usd(p.budget_usd)})" if p.budget_usd else "")
                       + (f" (deadline {p.deadline_hours} h)" if p.deadline_hours else ""))
    if any(c.cost_usd for c in result.candidates):
        typer.echo(f"cloud costs: list prices of {written} ({'--prices ' + str(prices) if prices else 'llmkit'}), "
                   "start-up and billing increments included" + ("" if show_all else "; --all shows every candidate"))
        if age is not None and age > 90:
            typer.echo(f"warning: these prices are {age} days old; pass --prices FILE with current ones", err=True)
    multi = [c for c in ([result.candidates[0]] if result.candidates else []) if c.num_devices > 1 and c.fits]
    if multi:
        c = multi[0]
        nodes, per_node = (c.num_devices + 7) // 8, min(c.num_devices, 8)
        how = (f"llmkit train --config {config} --nproc-per-node {per_node}"
               + (f" --nnodes {nodes} --node-rank <0..{nodes - 1}> --rdzv-endpoint <first node>:29400" if nodes > 1 else ""))
        typer.echo(f"rows with n > 1 train with torchrun ({'FSDP' if c.sharded else 'DDP'} for {c.num_devices} x "
                   f"{c.device}, as train.distributed: {cfg.train.distributed} decides): {how}")
    if result.suggestions:
        where = f"{p.num_devices} device(s)" if p.num_devices else "any device count"
        typer.echo(f"nothing fits on {where}{'' if p.sharding else ' without sharding'}: every candidate needs more "
                   "memory than the device has")
    for s in result.suggestions:
        typer.echo(f"to make it fit: {s}")
    kv = result.serving
    typer.echo(f"serving (bf16 weights {kv['weights_bytes'] / GB:.2f} GB): KV cache {kv['kv_bytes_per_token'] / 1024:.1f} KiB "
               f"per token, {kv['kv_bytes_per_sequence'] / 2**20:,.1f} MiB per {kv['context']}-token sequence, "
               f"{kv['kv_bytes_at_max_batch'] / GB:.2f} GB for serve.max_batch_size={kv['max_batch']} full sequences")


def _print_serve_plan(cfg: Any, result: Any, show_all: bool, top: int) -> None:
    """`llmkit plan --serve` in words."""
    from llmkit.planning.entry import GB, human_usd, prices_age_days

    c, t, n, prompt = result.concurrency, result.tokens_per_s_per_user, result.context, result.prompt_tokens
    kv = result.kv_bytes_per_token
    typer.echo(f"{cfg.name}: serving {c} user(s) at {t:g} tokens/s each, {n}-token sequences ({prompt} prompt + "
               f"{n - prompt} generated)")
    w = result.weights_bytes
    typer.echo(f"memory: weights {_bytes(w['bf16'])} in bf16 ({_bytes(w['fp32'])} in fp32, {_bytes(w['int8'])} int8, "
               f"{_bytes(w['int4'])} int4 on a CPU); KV cache {kv['bf16'] / 1024:.1f} KiB per token in bf16, {_bytes(c * n * kv['bf16'])} for "
               f"{c} full sequences")

    def speed(r: Any) -> str:
        return (f"{r['tokens_per_s_per_user']:,.0f} tokens/s per user, {r['tokens_per_s']:,.0f} in all, first token "
                f"{_seconds(r['ttft_s'])}")

    if show_all:
        typer.echo(f"{'device':14} {'n':>2} {'dtype':5} {'fits':4} {'GB/dev':>7} {'step':>8} {'tok/s/user':>10} "
                   f"{'tok/s':>8} {'$/h':>8} {'$/M tok':>8}  offering")
        for cand in result.candidates[:top]:
            typer.echo(f"{cand.device:14} {cand.num_devices:2d} {cand.dtype:5} {'yes' if cand.fits else 'NO':4} "
                       f"{cand.memory_bytes_per_device / GB:7.2f} {cand.step_ms or 0:6.1f}ms "
                       f"{cand.tokens_per_s_per_user or 0:10,.0f} {cand.tokens_per_s or 0:8,.0f} "
                       f"{human_usd(cand.usd_per_hour):>8} {human_usd(cand.usd_per_million_tokens):>8}  "
                       f"{cand.offering or 'no price listed'}")
    for r in result.recommendations:
        cost = ("$0" if r["offering"] == "this machine" else
                f"{human_usd(r['usd_per_hour'])}/h, {human_usd(r['usd_per_million_tokens'])} per million tokens at full load")
        typer.echo(f"{'recommended' if r is result.recommendations[0] else 'or':>11}: {r['num_devices']} x {r['device']} "
                   f"({r['dtype']}): {speed(r)}, {cost} ({r['offering']}) - {r['why']}")
    mine = [cand for cand in result.candidates if cand.offering == "this machine"]
    if mine and not any(r["offering"] == "this machine" for r in result.recommendations):
        m = mine[0]
        typer.echo(f"this machine ({m.dtype}): " + ("does not hold the weights and cache (RAM)" if not m.fits else
                   f"{speed(m.__dict__)} - short of {t:g} per user"))
    if result.machine_note:
        typer.echo(f"note: {result.machine_note}")
    if not result.recommendations:
        fits = [cand for cand in result.candidates if cand.fits and cand.usd_per_hour is not None]
        if fits:
            best = max(fits, key=lambda cand: cand.tokens_per_s_per_user or 0)
            typer.echo(f"nothing listed serves {c} users at {t:g} tokens/s each; fastest: {best.num_devices} x "
                       f"{best.device}, {best.tokens_per_s_per_user:,.0f} tokens/s per user - fewer users per "
                       "replica (several replicas behind a load balancer) or a smaller model")
        else:
            typer.echo(f"nothing listed holds the weights and {c} sequences of {n} tokens; lower --concurrency or --context")
    if any(cand.usd_per_hour for cand in result.candidates):
        written, age = prices_age_days()
        typer.echo(f"GPU speeds from datasheet bandwidth and peak (bf16, tensor parallel within one instance, as "
                   f"vLLM serves); list prices of {written}" + ("" if show_all else "; --all shows every candidate"))
        if age is not None and age > 90:
            typer.echo(f"warning: these prices are {age} days old; pass --prices FILE with current ones", err=True)


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return "<1 ms"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def _bytes(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"
