"""`llmkit eval`: metrics of a trained model on its run's validation data, plus fixed samples.

Language models: validation loss, perplexity and bits per byte (nats over the UTF-8 bytes the
target tokens stand for, / ln 2). Classifiers: accuracy, macro-F1 and the confusion matrix.
Both: greedy completions of ``eval.sample_prompts`` (SFT runs render them as a user turn of the
chat template). Results go to ``<run>/eval.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.config.schema import RunConfig
from llmkit.errors import UsageError
from llmkit.data.batches import task_batches
from llmkit.eval.loss import evaluate
from llmkit.fsutil import atomic_write_text
from llmkit.generate.decode import generate
from llmkit.generate.sampling import SamplingParams
from llmkit.plan.memory import micro_batch_for_device
from llmkit.rundir import RunDir


def token_bytes(tokenizer: Any) -> np.ndarray:
    """UTF-8 bytes each token id stands for (special tokens: 0)."""
    vocab = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    table = np.zeros(vocab, dtype=np.int64)
    pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    byte_level = pre is not None and "ByteLevel" in repr(pre)
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab)))
    for i, tok in enumerate(tokens):
        if i in special or tok is None:
            continue
        # byte-level BPE: one character per byte; otherwise decode (approximate at partial chars)
        table[i] = len(tok) if byte_level else len(tokenizer.decode([i]).encode("utf-8"))
    return table


def lm_metrics(model: Any, batches: list[dict[str, np.ndarray]], byte_table: np.ndarray) -> dict[str, float]:
    """Loss, perplexity and bits per byte over batches of (input_ids, labels), fp32."""
    result = evaluate(model, batches, byte_table=byte_table)
    return {**result.metrics(), "val_tokens": result.count}


def classify_metrics(model: Any, batches: list[dict[str, np.ndarray]], labels: dict[int, str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and the confusion matrix (rows: true label, columns: predicted)."""
    k = len(labels)
    result = evaluate(model, batches, classify=True, num_labels=k)
    confusion = np.array(result.confusion, dtype=np.int64)
    f1s = []
    for c in range(k):
        tp = confusion[c, c]
        precision = tp / max(confusion[:, c].sum(), 1)
        recall = tp / max(confusion[c, :].sum(), 1)
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return {"val_accuracy": result.val_accuracy, "macro_f1": float(np.mean(f1s)),
            "labels": [labels[i] for i in range(k)], "confusion_matrix": confusion.tolist(), "val_examples": result.count}


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


def evaluate_run(run: str | Path, write: bool = True, harness_tasks: list[str] | None = None,
                 harness_dir: str | Path | None = None, harness_limit: int | None = None,
                 canaries: str | Path | None = None, canary_candidates: int = 1000) -> dict[str, Any]:
    """Evaluate a run directory's final model on its validation data (and harness tasks: the
    config's ``eval.harness_tasks`` plus ``harness_tasks``; the memorization of ``canaries``,
    see ``llmkit.eval.canaries``); writes eval.json."""
    from llmkit.model.load import load_for_inference

    run = RunDir(Path(run))
    cfg = run.load_config()
    model, tokenizer, model_dir = load_for_inference(run.root, device="cpu")
    result = evaluate_loaded(cfg, run, model, tokenizer, write=False)
    tasks = list(dict.fromkeys([*cfg.eval.harness_tasks, *(harness_tasks or [])]))
    if tasks:
        from llmkit.eval.harness import run_harness

        result["harness"] = run_harness(model_dir, tasks, harness_dir, harness_limit)
    if canaries is not None:
        from llmkit.eval.canaries import as_json, check, read_canaries

        if cfg.train.task == "classify":
            raise UsageError("canaries measure what a language model memorized; this run is a classifier",
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
    data = task_batches(eval_cfg, run.root, micro)
    batches = data.eval_batches()
    if cfg.train.task == "classify":
        metrics = classify_metrics(model, batches, data.id2label or {})
        result: dict[str, Any] = {"metrics": metrics, "samples": []}
    else:
        metrics = lm_metrics(model, batches, token_bytes(tokenizer))
        result = {"metrics": metrics, "samples": samples(model, tokenizer, cfg.eval.sample_prompts,
                                                           cfg.eval.sample_max_new_tokens, cfg.train.task == "sft")}
    result["run"] = cfg.name
    result["task"] = cfg.train.task
    if write:
        write_results(run, result)
    return result


def write_results(run: RunDir, result: dict[str, Any]) -> None:
    """eval.json; in an encrypted run the samples (generated from the data) go to the sealed
    eval_samples.json and eval.json keeps the metrics and where the samples are."""
    from llmkit.privacy import crypto

    if crypto.active() is not None and result.get("samples"):
        crypto.write_text(run.eval_samples, json.dumps(result["samples"], indent=2) + "\n")
        result = {**result, "samples": [], "samples_encrypted": {"file": run.eval_samples.name,
                                                                  "count": len(result["samples"])}}
    atomic_write_text(run.eval_results, json.dumps(result, indent=2) + "\n")
