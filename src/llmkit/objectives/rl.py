"""Reinforcement learning with verifiable rewards (train.task rl): GRPO and Dr. GRPO.

Every ``steps_per_generation`` steps the rank's next prompts are answered ``group_size`` times by
the policy itself, through llmkit's batched decoder (``llmkit.generate.batch.BatchDecoder``, the
one ``serve`` uses), sampled at ``temperature``/``top_p`` with seeds drawn from the run's seed,
the round and the rank. The rewards (``llmkit.objectives.rewards``) score each answer; its
advantage is its reward minus its group's mean (grpo: divided by the group's standard deviation
+ 1e-4; dr_grpo: not). The loss of a batch of answers, per answer token t::

    ratio_t = exp(logp_t - old_logp_t)          (old: the policy when sampling; 1 when on-policy)
    loss_t  = -min(ratio_t A, clip(ratio_t, 1 - eps, 1 + eps) A) + kl_beta ratio_t KL_t
    KL_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1      (the k3 estimator)

The KL term is weighted by the ratio (1 in value on-policy, but not in gradient): that makes its
gradient the unbiased reverse-KL gradient (DeepSeek-V3.2; TRL's ``use_bias_correction_kl``,
its default).

averaged over each answer's tokens (grpo) or summed and divided by ``max_new_tokens`` (dr_grpo),
then over answers. Log-probabilities are of the logits divided by the sampling temperature, as the
answers were drawn. This is TRL's GRPO loss (tests/unit/objectives/test_rl_trl.py checks it
against ``GRPOTrainer._compute_loss``).

Evaluation answers each validation prompt once (seeded per prompt, so every evaluation of a
model draws the same way) and reports the mean reward (``val_reward``; ``val_loss`` is its
negative), each reward's mean, the answers' length and the share that ended by themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.config.schema import RlConfig, RunConfig
from llmkit.errors import ConfigError
from llmkit.objectives.base import EvalResult, Objective
from llmkit.objectives.preference import peft_model, token_logps

Log = Callable[[str], None]
STD_EPS = 1e-4  # added to a group's standard deviation (TRL's value)


def advantages(rewards: np.ndarray, group: int, scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """(each answer's advantage, whether its group's rewards are all equal) for rewards laid out
    group by group; ``scale``: divide by the group's standard deviation (Bessel-corrected)."""
    r = rewards.reshape(-1, group).astype(np.float64)
    mean = r.mean(1, keepdims=True)
    std = r.std(1, ddof=1, keepdims=True)
    adv = r - mean
    if scale:
        adv = adv / (std + STD_EPS)
    flat = np.isclose(std, 0.0)
    return adv.reshape(-1).astype(np.float32), np.repeat(flat, group, axis=1).reshape(-1)


def grpo_loss(logps: Any, old: Any, ref: Any, adv: Any, mask: Any, rl: RlConfig) -> tuple[Any, Any, Any]:
    """(mean loss over the answers, each answer's loss (B,), clipped-token indicator (B, T)) of
    per-token log-probabilities (B, T) with their mask; ``old``/``ref``: None when on-policy / no KL."""
    import torch

    old = logps.detach() if old is None else old
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - rl.clip_epsilon, 1 + rl.clip_epsilon)
    a = adv.unsqueeze(1)
    per_token = -torch.min(ratio * a, clipped * a)
    if ref is not None and rl.kl_beta:  # weighted by the ratio: the unbiased reverse-KL gradient (TRL's default)
        per_token = per_token + rl.kl_beta * k3(ref, logps) * ratio
    mask = mask.to(per_token.dtype)
    if rl.loss == "grpo":
        per_answer = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    else:
        per_answer = (per_token * mask).sum(-1) / rl.max_new_tokens
    hit = ((ratio < 1 - rl.clip_epsilon) & (a < 0)) | ((ratio > 1 + rl.clip_epsilon) & (a > 0))
    return per_answer.mean(), per_answer, hit & mask.bool()


@dataclass
class Reference:
    """The KL reference: the policy with its LoRA adapters disabled, or a frozen copy."""

    kind: str = "none"
    model: Any = None

    def logps(self, policy: Any, batch: dict[str, Any], chunked: bool, temperature: float) -> Any:
        import torch

        args = (batch["input_ids"], batch["labels"], batch["attention_mask"], chunked, temperature)
        with torch.no_grad():
            if self.kind == "copy":
                return token_logps(self.model, *args)
            with peft_model(policy).disable_adapter():
                return token_logps(peft_model(policy), *args)


class RlMetrics:
    """Sums of the validation answers' statistics."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}
        self.count = 0

    def add(self, batch: dict[str, Any], loss: float, count: int, out: Any) -> None:
        self.count += count
        for k, v in out["stats"].items():
            acc = self.sums.setdefault(k, [0.0, 0.0])
            acc[0], acc[1] = acc[0] + float(np.sum(v)), acc[1] + len(v)

    def result(self) -> EvalResult:
        extra = {f"val_{k}": s / n for k, (s, n) in self.sums.items() if n}
        return EvalResult(-extra.get("val_reward", 0.0), self.count, extra=extra)


@dataclass
class Rl(Objective):
    """GRPO on the run's own rollouts; ``settings`` is the run's ``train.rl``."""

    settings: RlConfig = field(default_factory=RlConfig)
    reference: Reference = field(default_factory=Reference)
    sampler: Any = None  # the bound Rollouts (for_run)

    name = "rl"
    head = "causal_lm"
    generates = True
    section = "rl"
    compiles = False

    def check(self, cfg: RunConfig) -> None:
        from llmkit.objectives.rewards import check_sandbox

        check_sandbox(cfg.train.rl)

    def batches(self, cfg: RunConfig, run_root: Path, micro: int, rank: int = 0, world: int = 1) -> Any:
        from llmkit.data.rollouts import RolloutBatches

        return RolloutBatches(cfg, run_root, micro, rank, world)

    def for_run(self, cfg: RunConfig, run_root: Path, model: Any, data: Any, device: Any, precision: str,
                log: Log, starting: bool = True, is_main: bool = True) -> Rl:
        """Bound to the run: its rewards, its sampler (attached to ``data``) and its reference."""
        from llmkit.objectives.rollout import Rollouts

        rl = cfg.train.rl
        bound = Rl(settings=rl)
        bound.sampler = Rollouts(cfg, run_root, model, data, device, precision, is_main)
        data.sample = bound.sampler.train_rows
        if rl.kl_beta and starting:
            bound.reference = _reference(cfg, model)
        elif rl.kl_beta:
            bound.reference = Reference("none")  # evaluation scores rewards only
        if starting:
            log(f"rl: {rl.loss}, {rl.group_size} answers a prompt, up to {rl.max_new_tokens} tokens at temperature "
                f"{rl.temperature}; rewards: {', '.join(r.function for r in rl.rewards)}; KL reference: "
                + ({"none": "none", "copy": "a frozen copy", "adapters_off": "adapters disabled"}[bound.reference.kind]))
        return bound

    def standalone(self) -> Objective:
        """The next-token loss on the validation prompts (the merge check of final/)."""
        from llmkit.objectives import get

        return get("lm")

    def loss(self, model: Any, batch: dict[str, Any], chunked: bool = False) -> tuple[Any, int, Any]:
        if "prompt_index" in batch:
            return self._evaluate(batch)
        rl = self.settings
        logps = token_logps(model, batch["input_ids"], batch["labels"], batch["attention_mask"], chunked,
                            rl.temperature)
        ref = None
        if rl.kl_beta and self.reference.kind != "none":
            ref = self.reference.logps(model, batch, chunked, rl.temperature)
        mask = batch["labels"] != -100
        loss, _, hit = grpo_loss(logps, batch.get("old_logps"), ref, batch["advantages"].float(), mask, rl)
        out = {"stats": {k[5:]: batch[k] for k in batch if k.startswith("stat_")}, "clipped": hit.sum(),
               "tokens": mask.sum()}
        if ref is not None:
            out["kl"] = (k3(ref, logps.detach()) * mask).sum()
        return loss, int(batch["input_ids"].shape[0]), out

    def _evaluate(self, batch: dict[str, Any]) -> tuple[Any, int, Any]:
        import torch

        idx = [int(i) for i in batch["prompt_index"].tolist()]
        stats = self.sampler.val_stats(idx)
        reward = float(np.mean(stats["reward"]))
        return torch.tensor(-reward), len(idx), {"stats": stats}

    def loss_weight(self, batch: dict[str, Any]) -> int:
        return int(batch["input_ids"].shape[0])

    def example_losses(self, model: Any, batch: dict[str, Any]) -> Any:
        raise ConfigError("privacy.dp does not cover train.task rl", "", "train without privacy.dp")

    def step_metrics(self, out: Any) -> dict[str, tuple[float, float]]:
        """Per answer: its reward and each reward's value, the spread of the rewards over its
        generation, its length, whether it ended by itself, whether its group's rewards were all
        equal (no learning signal); per token: the clip fraction (and KL); per generation: its
        seconds, tokens and tokens/s (means over the ranks)."""
        metrics: dict[str, tuple[float, float]] = {}
        for k, v in out["stats"].items():
            v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
            if k in ("generation_s", "rollout_tokens", "rollout_tokens_per_s"):
                if np.isfinite(v).any():
                    metrics[k] = (float(np.nansum(v)), 1.0)
                continue
            metrics[k] = (float(v.sum()), float(v.size))
        metrics["clip_fraction"] = (float(out["clipped"]), float(out["tokens"]))
        if "kl" in out:
            metrics["kl"] = (float(out["kl"]), float(out["tokens"]))
        return metrics

    def metrics(self, data: Any, tokenizer: Any = None) -> RlMetrics:
        return RlMetrics()

    def report(self, result: EvalResult, data: Any) -> dict[str, Any]:
        return {**result.metrics(), "val_prompts": result.count, "loss": self.settings.loss}


def k3(ref: Any, logps: Any) -> Any:
    """The k3 estimate of KL(policy || reference) per token."""
    import torch

    d = ref - logps
    return torch.exp(d) - d - 1


def _reference(cfg: RunConfig, model: Any) -> Reference:
    """The KL reference from the starting model: adapters disabled (LoRA) or a frozen copy."""
    import copy

    if cfg.model.lora.enabled:
        return Reference("adapters_off")
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return Reference("copy", frozen)


OBJECTIVE = Rl()
