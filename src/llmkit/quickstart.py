"""`llmkit quickstart`: the whole chain on the embedded corpus, in a few minutes on 2 CPU cores.

doctor summary -> prepare (BPE tokenizer + token shards of Python's own documentation) ->
pretrain the `tiny` preset -> supervised fine-tuning on question/answer pairs derived from the
same documentation (so `llmkit chat` answers in chat form) -> eval (perplexity before/after, SFT
loss before/after, samples) -> report.html.

Layout: ``runs/quickstart/pretrain/`` is the pretraining run; ``runs/quickstart/`` itself is the
fine-tuning run, whose ``final/`` is the chat model.

The Q/A pairs ask about each topic in three phrasings with the same answer, and the validation
split holds out phrasings, not topics: the SFT validation loss shows the chat format and the
answers being learned, not generalisation to unseen topics (a 2M-parameter model has little).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmkit.config.load import validate_config
from llmkit.config.presets import load_preset
from llmkit.config.schema import RunConfig
from llmkit.data.corpus import embedded_statements
from llmkit.fsutil import atomic_write_text
from llmkit.rundir import RunDir

Log = Callable[[str], None]
QUESTIONS = ("What is {t}?", "Explain {t}.", "Tell me about {t}.")


def qa_pairs(max_answer_chars: int = 320) -> list[dict[str, str]]:
    """Question/answer pairs from the embedded docs: three phrasings of a topic's question, its
    opening paragraph as the answer."""
    return [{"prompt": q.format(t=subject), "completion": answer}
            for subject, answer in embedded_statements(max_answer_chars) for q in QUESTIONS]


def _configs(root: Path, pretrain_steps: int, sft_steps: int, budget_s: float,
             offline: bool = False) -> tuple[RunConfig, RunConfig]:
    base = {**load_preset("tiny"), "privacy": {"offline": offline}}
    pre = {**base, "name": "pretrain", "runs_root": str(root)}
    pre["data"] = {"source": "embedded", "val_fraction": 0.1}
    # 4 sequences a step, not the preset's 16: in a few minutes of 2 CPU cores the model sees ~1 M
    # tokens, far too few for large batches to pay; 4x the steps of a quarter the size reach a much
    # lower perplexity in the same time (66 -> 43 at batch 8 -> 4 in one comparison on this kind of
    # machine; the close note of issue #18 has the table)
    pre["train"] = {**base["train"], "max_steps": pretrain_steps, "max_time_s": 0.7 * budget_s,
                    "global_batch_size": 4, "learning_rate": 0.003, "min_learning_rate": 0.0003,
                    "warmup_steps": 20, "eval_every_steps": max(50, pretrain_steps // 4),
                    "checkpoint_every_steps": max(50, pretrain_steps // 3), "log_every_steps": 10, "keep_last": 1}
    final = str(root / "quickstart" / "pretrain" / "final")
    sft = {**base, "name": "quickstart", "runs_root": str(root)}
    sft["model"] = {**base["model"], "from_pretrained": final}
    sft["tokenizer"] = {"kind": "pretrained", "path": final}
    sft["data"] = {"source": "embedded", "embedded_sft": "questions"}
    sft["train"] = {**base["train"], "task": "sft", "max_steps": sft_steps, "max_time_s": 0.3 * budget_s,
                    "learning_rate": 0.003, "min_learning_rate": 0.0003, "warmup_steps": 10,
                    "eval_every_steps": max(25, sft_steps // 4), "checkpoint_every_steps": sft_steps,
                    "log_every_steps": 10, "keep_last": 1}
    sft["eval"] = {"sample_prompts": ["What is the `for` statement?", "Explain the `while` statement.",
                                      "What is the `with` statement?"], "sample_max_new_tokens": 60,
                   "held_out_questions": "embedded"}
    return validate_config(pre), validate_config(sft)


def _with_time_limit(cfg: RunConfig, seconds: float) -> RunConfig:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_time_s": seconds})})


def _step_seconds(cfg: RunConfig) -> float:
    """Measured seconds per optimizer step of ``cfg``'s model on this machine, as `llmkit train` runs
    it (its precision, including bf16 weights with fp32 masters where auto picks them; the chunked
    loss; its AdamW): best of 4 steps after one warm-up step, random tokens (the minimum is what the
    machine does when nothing else interferes)."""
    import torch

    from llmkit.config.derived import train_precision
    from llmkit.device import autocast
    from llmkit.objectives.lm import OBJECTIVE as LM
    from llmkit.model.build import build_model
    from llmkit.planning.memory import micro_batch_for_device
    from llmkit.training import master as master_
    from llmkit.training.optim import make_optimizer

    device = torch.device("cpu")
    policy = train_precision(cfg, device)
    precision = policy.compute
    micro = micro_batch_for_device(cfg, device, precision)[0]
    model = build_model(cfg.model, cfg.tokenizer.vocab_size, 0, None, seed=0)
    keep_bf16 = policy.bf16_weights
    masters = master_.MasterWeights(model) if keep_bf16 else None
    opt = make_optimizer(model, cfg.train, "cpu", masters)
    x = torch.randint(0, cfg.tokenizer.vocab_size, (micro, cfg.train.sequence_length_tokens + 1))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        with autocast(device, precision):
            loss = LM.loss(model, {"input_ids": x[:, :-1], "labels": x[:, 1:]}, chunked=True)[0]
        loss.backward()
        master_.measured_step(model, opt, masters, cfg.train.grad_clip_norm)
        times.append(time.perf_counter() - t0)
    return min(times[1:]) * (cfg.train.global_batch_size // micro)


def _eval_micro_batch(cfg: RunConfig) -> int:
    """The micro-batch evaluation uses on this CPU (fp32), as `llmkit eval` resolves it."""
    import torch

    from llmkit.planning.memory import micro_batch_for_device

    return micro_batch_for_device(cfg, torch.device("cpu"), "fp32")[0]


def _untrained_ppl(cfg: RunConfig, run: Path) -> float:
    """Validation perplexity of the freshly initialised model (the "before" of pretraining)."""
    from llmkit.data.batches import task_batches
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.model.build import build_model

    data = task_batches(cfg, run, _eval_micro_batch(cfg))
    model = build_model(cfg.model, data.vocab_size, data.eos_id, None, cfg.train.seed).eval()
    return _lm_eval(model, data, load_tokenizer(RunDir(run).tokenizer)).val_ppl


def _lm_eval(model: Any, data: Any, tokenizer: Any) -> Any:
    """The language-modelling objective's evaluation of ``model`` on ``data``'s validation batches."""
    from llmkit.eval.evaluator import evaluate
    from llmkit.objectives.lm import OBJECTIVE as LM

    return evaluate(model, data.eval_batches(), LM, LM.metrics(data, tokenizer))


def run_quickstart(root: str | Path = "runs", minutes: float = 4.0, fresh: bool = False, log: Log = print,
                   offline: bool = False) -> dict[str, Any]:
    """Run the whole chain; returns the summary written to runs/quickstart/quickstart.json.
    ``offline``: privacy.offline for both runs (and this process)."""
    from llmkit.privacy.offline import apply

    apply(offline)
    from llmkit.data.batches import task_batches
    from llmkit.data.prepare import prepare
    from llmkit.doctor.report import run_doctor
    from llmkit.eval.run import evaluate_loaded
    from llmkit.model.load import load_for_inference
    from llmkit.report.html import build_report
    from llmkit.training.loop import train

    start = time.monotonic()
    root = Path(root)
    qs = root / "quickstart"
    if fresh and qs.exists():
        shutil.rmtree(qs)
    elif qs.exists():
        log(f"{qs} exists from an earlier quickstart: continuing it (pass --fresh to start over)")
    budget = minutes * 60
    report = run_doctor(run_dir=root)
    problems = [f for f in report.findings if f.status in ("fail", "warn")]
    cpu = next((f for f in report.findings if f.id == "cpu"), None)
    log(f"[1/6] doctor: {'ready' if not report.failed else 'NOT ready'}; {cpu.summary if cpu else ''}")
    if offline:
        from llmkit.privacy.offline import missing

        log(f"      privacy: offline: on ({'every switch set' if not missing() else 'MISSING ' + ', '.join(missing())}: "
            "Hugging Face offline, telemetry off, loopback serving only)")
    for f in problems:
        log(f"      {f.status}: {f.id}: {f.summary}" + (f" (fix: {f.fix})" if f.fix else ""))

    probe_pre, _ = _configs(root, 100, 100, budget, offline)
    per_step = _step_seconds(probe_pre)
    pretrain_steps = max(40, int(0.55 * budget / per_step))
    # an SFT batch is 16 short Q/A pairs (padded to the longest in the batch, ~1/4 of the pretraining
    # length): about one pretraining step of 4 full sequences
    sft_steps = max(30, min(300, int(0.25 * budget / per_step)))
    pre_cfg, sft_cfg = _configs(root, pretrain_steps, sft_steps, budget, offline)
    pre_dir = qs / "pretrain"
    log(f"[2/6] prepare: tokenizer + token shards of Python's documentation ({per_step:.2f} s/step measured, "
        f"planning {pretrain_steps} pretraining steps)")
    prepare(pre_cfg, run_dir=pre_dir, log=lambda s: log(f"      {s}"))
    untrained = _untrained_ppl(pre_cfg, pre_dir)

    log(f"[3/6] pretrain the tiny preset (untrained validation perplexity {untrained:.0f})")
    pre_started = time.monotonic()
    pre = train(pre_cfg, run_dir=pre_dir, log=lambda s: log(f"      {s}"))
    pretrained_ppl = pre.eval.val_ppl
    # the fine-tuning gets what pretraining left of the budget (at least its own share): when the
    # planned pretraining steps finish early, its steps are not cut short by the clock
    sft_cfg = _with_time_limit(sft_cfg, max(0.3 * budget, budget - (time.monotonic() - pre_started)))

    log("[4/6] fine-tune on question/answer pairs from the same documentation")
    prepare(sft_cfg, run_dir=qs, log=lambda s: log(f"      {s}"))
    base_model, base_tok, _ = load_for_inference(pre_dir, device="cpu")
    sft_before = _lm_eval(base_model, task_batches(sft_cfg, qs, _eval_micro_batch(sft_cfg)), base_tok).val_loss
    sft = train(sft_cfg, run_dir=qs, log=lambda s: log(f"      {s}"))

    log("[5/6] evaluate")
    model, tok, _ = load_for_inference(qs, device="cpu")
    result = evaluate_loaded(sft_cfg, RunDir(qs), model, tok)
    summary = {
        "untrained_val_ppl": untrained, "pretrained_val_ppl": pretrained_ppl,
        "ppl_improvement": untrained / pretrained_ppl, "pretrain_steps": pre.step,
        "sft_val_loss_before": sft_before, "sft_val_loss_after": sft.eval.val_loss, "sft_steps": sft.step,
        "held_out_score": result["metrics"]["held_out_score"],
        "seconds": time.monotonic() - start,
    }
    atomic_write_text(RunDir(qs).quickstart_summary, json.dumps(summary, indent=2) + "\n")
    log(f"      validation perplexity {untrained:.0f} -> {pretrained_ppl:.1f} ({summary['ppl_improvement']:.0f}x lower); "
        f"SFT validation loss {sft_before:.3f} -> {sft.eval.val_loss:.3f}")
    right = sum(a["right"] for a in result["held_out"])
    log(f"      held-out questions (phrasings never trained on): {right}/{len(result['held_out'])} answered about "
        f"the topic asked ({summary['held_out_score']:.0%})")
    for s in result["samples"]:
        log(f"      Q: {s['prompt']}\n      A: {s['completion'].strip()}")
    log("[6/6] report")
    out = build_report(qs)
    log(f"      {out}")
    log(f"done in {summary['seconds']:.0f} s. Next:\n  llmkit chat {qs}\n  llmkit generate {qs} --prompt 'What is "
        f"the `if` statement?' --chat\n  llmkit eval {qs}\n  llmkit report {qs}")
    return summary
