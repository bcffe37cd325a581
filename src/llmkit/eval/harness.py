"""lm-evaluation-harness adapter: an llmkit model as an `lm_eval` LM (optional extra `eval`).

Implements the three request types the harness sends: ``loglikelihood`` (multiple choice),
``loglikelihood_rolling`` (perplexity tasks) and ``generate_until`` (through llmkit's own
decode loop, so stop strings behave as everywhere else in llmkit). Tasks may come from the
harness or from a folder of task YAML files (``include_path``), e.g. local JSON data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.optional import require


def _lm_base() -> Any:
    return require("lm_eval.api.model", "eval", "lm-evaluation-harness tasks").LM


def make_lm(model: Any, tokenizer: Any, batch_size: int = 8) -> Any:
    """Wrap a loaded model and tokenizer as an lm_eval LM."""
    import torch

    from llmkit.generate.decode import context_length, generate
    from llmkit.generate.sampling import SamplingParams, log_probs

    base = _lm_base()
    window = context_length(model)
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id

    class LlmkitLM(base):  # type: ignore[misc, valid-type]
        def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
            """Sum of log-probabilities of each continuation given its context, and whether greedy."""
            out = []
            for i in range(0, len(pairs), batch_size):
                chunk = pairs[i : i + batch_size]
                seqs = [(ctx + cont)[-(window + 1):] for ctx, cont in chunk]
                longest = max(len(s) - 1 for s in seqs)
                ids = torch.full((len(seqs), longest), eos, dtype=torch.long)
                for r, s in enumerate(seqs):
                    ids[r, : len(s) - 1] = torch.tensor(s[:-1])
                with torch.inference_mode():
                    logp = log_probs(model(input_ids=ids.to(device)).logits)  # the server's numerics too
                for r, ((ctx, cont), s) in enumerate(zip(chunk, seqs)):
                    n = len(cont)
                    positions = torch.arange(len(s) - 1 - n, len(s) - 1)
                    target = torch.tensor(s[-n:], device=device)
                    rows = logp[r, positions]
                    out.append((float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())))
            return out

        def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            whole = tokenizer.encode(context + continuation, add_special_tokens=False)
            ctx = tokenizer.encode(context, add_special_tokens=False) if context else []
            cont = whole[len(ctx):] if whole[: len(ctx)] == ctx else tokenizer.encode(continuation, add_special_tokens=False)
            return (ctx or [eos]), cont

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            return self._score([self._split(*r.args) for r in requests])

        def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
            results = []
            for r in requests:
                ids = tokenizer.encode(r.args[0], add_special_tokens=False)
                # disjoint windows of targets, each conditioned on as much preceding text as fits
                pieces = [([eos] + ids[:start], ids[start : start + window - 1])
                          for start in range(0, len(ids), window - 1)]
                results.append(sum(score for score, _ in self._score(pieces)))
            return results

        def generate_until(self, requests: list[Any]) -> list[str]:
            texts = []
            for r in requests:
                context, kwargs = r.args
                until = kwargs.get("until") or []
                params = SamplingParams(max_new_tokens=int(kwargs.get("max_gen_toks", 128)),
                                        temperature=float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                                        stop=tuple(u for u in ([until] if isinstance(until, str) else until) if u))
                ids = tokenizer.encode(context, add_special_tokens=False)[-(window - 1):] or [eos]
                texts.append(generate(model, tokenizer, [ids], [params])[0].text)
            return texts

    return LlmkitLM()


def run_harness(model_path: str | Path, tasks: list[str], include_path: str | Path | None = None,
                limit: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Evaluate a run or model directory on harness tasks; returns {task: {metric: value}}."""
    _lm_base()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from llmkit.model.load import load_for_inference

    if not tasks:
        raise UsageError("no harness tasks given", "", "pass --task NAME (or set eval.harness_tasks)")
    model, tokenizer, _ = load_for_inference(model_path, device="auto")
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UsageError(f"unknown harness task(s): {', '.join(unknown)}",
                         f"{len(manager.all_tasks)} tasks are known" + (f" (with {include_path})" if include_path else ""),
                         "check the name, or pass --task-dir with your task YAML files")
    out = simple_evaluate(model=make_lm(model, tokenizer, batch_size), tasks=tasks, task_manager=manager,
                          limit=limit, log_samples=False)
    return {task: {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in out["results"].items()}
