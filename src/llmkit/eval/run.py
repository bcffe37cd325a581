"""`llmkit eval`: metrics of a trained model on its run's validation data, plus fixed samples.

Language models: validation loss, perplexity and bits per byte (nats over the UTF-8 bytes the
target tokens stand for, / ln 2). Classifiers: accuracy, macro-F1 and the confusion matrix.
Both: greedy completions of ``eval.sample_prompts`` (SFT runs render them as a user turn of the
chat template). Results go to ``<run>/eval.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from llmkit.config.schema import RunConfig
from llmkit.errors import UsageError
from llmkit.eval.evaluator import evaluate
from llmkit.objectives import for_task
from llmkit.fsutil import atomic_write_text
from llmkit.generate.decode import generate
from llmkit.generate.sampling import SamplingParams
from llmkit.planning.memory import micro_batch_for_device
from llmkit.config.derived import run_context
from llmkit.rundir import RunDir


def samples(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, chat: bool) -> list[dict[str, str]]:
    """Greedy completions of fixed prompts (as chat turns for chat models)."""
    if not prompts:
        return []
    if chat:
        ids = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False) for p in prompts]
    else:
        ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)] * len(prompts)
    return [{"prompt": p, "completion": c.text} for p, c in zip(prompts, generate(model, tokenizer, ids, params))]


def held_out_answers(model: Any, tokenizer: Any, max_new_tokens: int, chat: bool) -> list[dict[str, Any]]:
    """The answers to the embedded held-out questions (``llmkit.data.docqa``), each scored."""
    from llmkit.data.docqa import held_out_set, score

    questions = held_out_set()
    answers = samples(model, tokenizer, [q.question for q in questions], max_new_tokens, chat)
    return [{"question": q.question, "answer": a["completion"], "right": score(a["completion"], q)}
            for q, a in zip(questions, answers)]


def evaluate_run(run: str | Path, write: bool = True, harness_tasks: list[str] | None = None,
                 harness_dir: str | Path | None = None, harness_limit: int | None = None,
                 canaries: str | Path | None = None, canary_candidates: int = 1000) -> dict[str, Any]:
    """Evaluate a run directory's final model on its validation data (and harness tasks: the
    config's ``eval.harness_tasks`` plus ``harness_tasks``; the memorization of ``canaries``,
    see ``llmkit.eval.canaries``); writes eval.json (in the run's context: its key, offline mode)."""
    run = RunDir(Path(run))
    cfg = run.load_config()
    with run_context(cfg).open_run(run.root):
        return _evaluate_run(cfg, run, write, harness_tasks, harness_dir, harness_limit, canaries, canary_candidates)


def _evaluate_run(cfg: RunConfig, run: RunDir, write: bool, harness_tasks: list[str] | None,
                  harness_dir: str | Path | None, harness_limit: int | None, canaries: str | Path | None,
                  canary_candidates: int) -> dict[str, Any]:
    from llmkit.model.load import load_for_inference

    model, tokenizer, model_dir = load_for_inference(run.root, device="cpu")
    result = evaluate_loaded(cfg, run, model, tokenizer, write=False)
    tasks = list(dict.fromkeys([*cfg.eval.harness_tasks, *(harness_tasks or [])]))
    if tasks:
        from llmkit.eval.harness import run_harness

        result["harness"] = run_harness(model_dir, tasks, harness_dir, harness_limit)
    if canaries is not None:
        from llmkit.eval.canaries import as_json, check, read_canaries

        if not for_task(cfg.train.task).generates:
            raise UsageError(f"canaries measure what a language model memorized; this run is {cfg.train.task}",
                             "", "run --canaries on a pretraining or SFT run")
        result["canaries"] = as_json(check(model, tokenizer, read_canaries(canaries), canary_candidates,
                                           seed=cfg.train.seed))
    if write:
        write_results(run, result)
    return result


def evaluate_loaded(cfg: RunConfig, run: RunDir, model: Any, tokenizer: Any, write: bool = True) -> dict[str, Any]:
    """Evaluate an in-memory model on the run's validation data (see module docstring)."""
    micro, _, _ = micro_batch_for_device(cfg, next(model.parameters()).device, "fp32")
    eval_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"eval_batches": cfg.eval.batches})})
    objective = for_task(cfg.train.task)
    data = objective.batches(eval_cfg, run.root, micro)
    device = next(model.parameters()).device
    objective = objective.for_run(cfg, run.root, model, data, device, "fp32", lambda _: None, starting=False)
    scored = evaluate(model, data.eval_batches(), objective, objective.metrics(data, tokenizer))
    result: dict[str, Any] = {"metrics": objective.report(scored, data), "samples": []}
    if objective.generates:
        chat = cfg.train.task in ("sft", "preference", "rl")
        result["samples"] = samples(model, tokenizer, cfg.eval.sample_prompts, cfg.eval.sample_max_new_tokens, chat)
        if cfg.eval.held_out_questions == "embedded":
            result["held_out"] = held_out_answers(model, tokenizer, cfg.eval.sample_max_new_tokens, chat)
            result["metrics"]["held_out_score"] = sum(a["right"] for a in result["held_out"]) / len(result["held_out"])
    result["run"] = cfg.name
    result["task"] = cfg.train.task
    if write:
        write_results(run, result)
    return result


def write_results(run: RunDir, result: dict[str, Any]) -> None:
    """eval.json; in an encrypted run the samples (generated from the data) go to the sealed
    eval_samples.json and eval.json keeps the metrics and where the samples are (the held-out
    questions keep their verdicts, not their answers)."""
    from llmkit.privacy import crypto

    if crypto.active() is not None and result.get("held_out"):
        result = {**result, "held_out": [{k: v for k, v in a.items() if k != "answer"} for a in result["held_out"]]}
    if crypto.active() is not None and result.get("samples"):
        crypto.write_text(run.eval_samples, json.dumps(result["samples"], indent=2) + "\n")
        result = {**result, "samples": [], "samples_encrypted": {"file": run.eval_samples.name,
                                                                  "count": len(result["samples"])}}
    atomic_write_text(run.eval_results, json.dumps(result, indent=2) + "\n")
