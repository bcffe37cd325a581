"""Sampling and scoring the answers of an RL run (``llmkit.objectives.rl``).

Answers are decoded by :class:`llmkit.generate.batch.BatchDecoder` (the decoder ``serve`` runs:
one prefill of all the prompts, then one token a step for every live row, rows leaving as they
end), each row with its own seeded generator: the seeds come from ``train.seed``, the round and
the rank (training) or the prompt's index (evaluation), so the same model draws the same answers
on a resume. An answer that ends with an end-of-turn token keeps it: the loss trains the model to
stop there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.config.schema import RunConfig
from llmkit.device import autocast
from llmkit.errors import RunFailure
from llmkit.objectives.rewards import Answer, Rewards
from llmkit.rundir import RunDir

SAMPLES_PER_ROUND = 4  # answers of the first prompt of each round kept for the report (rollouts.jsonl)


def _decoding_model(model: Any) -> Any:
    """The causal LM to decode with: under PEFT its base model, LoRA layers in place and active."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class Rollouts:
    """The run's sampler: its model (the policy being trained), tokenizer and rewards."""

    def __init__(self, cfg: RunConfig, run_root: Path, model: Any, data: Any, device: Any, precision: str,
                 is_main: bool):
        from llmkit.data.tokenizer import load_tokenizer
        from llmkit.privacy import crypto

        run = RunDir(run_root)
        self.rl, self.seed, self.rank = cfg.train.rl, cfg.train.seed, data.rank
        self.model, self.device, self.precision, self.data = model, device, precision, data
        self.tokenizer = load_tokenizer(run.tokenizer, cfg.model.trust_remote_code)
        self.rewards = Rewards(self.rl, run.task_data("rl") / "rewards", data.meta.get("reward_files", {}))
        self.samples = run.root / "rollouts.jsonl" if is_main and crypto.active() is None else None

    def generate(self, prompts: list[list[int]], seeds: list[int]) -> list[tuple[list[int], str, bool]]:
        """Each prompt's answer: (its tokens, end-of-turn token included when it ended by itself,
        its text, whether it ended by itself)."""
        import torch

        from llmkit.generate.batch import BatchDecoder
        from llmkit.generate.sampling import SamplingParams

        lm = _decoding_model(self.model)
        was_training = lm.training
        lm.eval()
        ids: list[list[int]] = [[] for _ in prompts]
        texts, ended = [""] * len(prompts), [False] * len(prompts)
        try:
            with torch.no_grad(), autocast(self.device, self.precision):
                decoder = BatchDecoder(lm, self.tokenizer, stream=False)
                params = [SamplingParams(max_new_tokens=self.rl.max_new_tokens, temperature=self.rl.temperature,
                                         top_p=self.rl.top_p, seed=int(s), logprobs=0) for s in seeds]
                events = decoder.add(prompts, params, list(range(len(prompts))))
                while True:
                    for e in events:
                        if e.finish_reason == "error":
                            raise RunFailure(f"sampling an answer failed: {e.error}", "", "report this as a bug")
                        if e.token_id is not None:
                            ids[e.key].append(e.token_id)
                        texts[e.key] += e.text
                        if e.finish_reason == "stop":
                            ended[e.key] = True
                            if e.token_id is None and e.scored is not None:
                                ids[e.key].append(e.scored)  # the end-of-turn token it chose
                    if not len(decoder):
                        break
                    events = decoder.step()
        finally:
            lm.train(was_training)
        return [(i, t, e) for i, t, e in zip(ids, texts, ended)]

    def _answers(self, prompts: list[dict[str, Any]], outs: list[tuple[list[int], str, bool]]) -> list[Answer]:
        return [Answer(p["prompt"], text, p["example"], len(ids) - int(end), end)
                for p, (ids, text, end) in zip(prompts, outs)]

    def train_rows(self, prompts: list[dict[str, Any]], round_: int) -> list[dict[str, Any]]:
        """One round: ``group_size`` answers to each prompt, scored, with their advantages (and the
        old log-probabilities when the rollouts serve several steps), as buffer rows."""
        from llmkit.objectives.rl import advantages

        g = self.rl.group_size
        seeds = np.random.default_rng([self.seed, round_, self.rank]).integers(0, 2**62, len(prompts) * g)
        flat = [p for p in prompts for _ in range(g)]
        t0 = time.perf_counter()
        outs = self.generate([p["prompt_ids"] for p in flat], seeds.tolist())
        gen_s = time.perf_counter() - t0
        answers = self._answers(flat, outs)
        totals, per = self.rewards.score(answers)
        adv, flat_group = advantages(np.asarray(totals), g, self.rl.loss == "grpo")
        tokens = sum(len(ids) for ids, _, _ in outs)
        rows = []
        for i, (p, (ids, _, end)) in enumerate(zip(flat, outs)):
            stats = {"reward": totals[i], "reward_std": float(np.std(totals)), "length": answers[i].tokens,
                     "ended": float(end), "zero_spread_groups": float(flat_group[i]),
                     **{f"reward_{k}": v[i] for k, v in per.items()},
                     **({f"reward_{k}_std": float(np.std(v)) for k, v in per.items()} if len(per) > 1 else {}),
                     "generation_s": gen_s if i == 0 else float("nan"),
                     "rollout_tokens": float(tokens) if i == 0 else float("nan"),
                     "rollout_tokens_per_s": tokens / gen_s if i == 0 else float("nan")}
            rows.append({"ids": [*p["prompt_ids"], *ids], "prompt_len": len(p["prompt_ids"]),
                         "advantage": float(adv[i]), "old": None, "stats": stats})
        if self.rl.steps_per_generation > 1:
            self._old_logps(rows)
        self._keep_samples(round_, flat[:SAMPLES_PER_ROUND], outs, totals, per)
        return rows

    def _old_logps(self, rows: list[dict[str, Any]]) -> None:
        """The sampling policy's per-token log-probabilities of each answer (the importance ratio's
        denominator for the steps that reuse these rollouts)."""
        import torch

        from llmkit.data.rollouts import collate_rows
        from llmkit.objectives.preference import token_logps

        step = max(1, self.data.micro)
        was_training = self.model.training
        self.model.eval()
        try:
            for s in range(0, len(rows), step):
                part = rows[s : s + step]
                b = {k: torch.from_numpy(v).to(self.device) for k, v in collate_rows(part, self.data.pad_id).items()}
                with torch.no_grad(), autocast(self.device, self.precision):
                    lp = token_logps(self.model, b["input_ids"], b["labels"], b["attention_mask"], True,
                                     self.rl.temperature).float().cpu().numpy()
                for r, row in zip(part, lp):
                    r["old"] = row[r["prompt_len"] - 1 : len(r["ids"]) - 1].tolist()
        finally:
            self.model.train(was_training)

    def _keep_samples(self, round_: int, prompts: list[dict[str, Any]], outs: list[Any], totals: list[float],
                      per: dict[str, list[float]]) -> None:
        if self.samples is None:
            return
        with open(self.samples, "a", encoding="utf-8") as fh:
            for i, p in enumerate(prompts):
                fh.write(json.dumps({"round": round_, "prompt": p["example"].get("prompt", p["prompt"]),
                                     "completion": outs[i][1], "reward": totals[i],
                                     "rewards": {k: v[i] for k, v in per.items()}}) + "\n")

    def val_stats(self, indices: list[int]) -> dict[str, np.ndarray]:
        """One answer to each validation prompt (seeded by its index), scored."""
        val = [self.data.prompts["val"][i] for i in indices]
        seeds = [int(np.random.default_rng([self.seed, 7919, i]).integers(0, 2**62)) for i in indices]
        outs = self.generate([p["prompt_ids"] for p in val], seeds)
        answers = self._answers(val, outs)
        totals, per = self.rewards.score(answers)
        return {"reward": np.asarray(totals), **{f"reward_{k}": np.asarray(v) for k, v in per.items()},
                "length": np.asarray([a.tokens for a in answers], np.float64),
                "ended": np.asarray([a.finished for a in answers], np.float64)}
