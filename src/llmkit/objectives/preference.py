"""Preference tuning (train.task preference): DPO, IPO, SimPO, ORPO and KTO (``train.preference``).

Batches (``llmkit.data.batches.PreferenceBatches``): for pairs, ``input_ids``/``labels``/
``attention_mask`` of 2P rows, the P chosen answers first, then their P rejected answers in the
same order (a pair never leaves its micro-batch, so never its rank); for KTO, P rows of answers
with ``kto_label`` and the ``kl_*`` rows (each prompt with another answer of the micro-batch).
``ref_logps`` rides along when the reference was computed ahead (``precompute_reference``).

The reference model (dpo, ipo, kto) is one of: the same model with its LoRA adapters disabled (no
second copy), a frozen copy of the starting weights, or log-probabilities computed once before
step 1 over the training and validation data and kept in the run (``reference/``). SimPO and ORPO
have none. The losses themselves are in ``llmkit.objectives.losses``.

Reward accuracy counts a tie (chosen and rejected rewards equal, as at step 0 where the policy is
the reference) as half right, so an untrained policy scores 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable


from llmkit.config.schema import PreferenceConfig, RunConfig
from llmkit.data.sft import IGNORE_INDEX as IGNORE
from llmkit.errors import ConfigError
from llmkit.objectives import losses
from llmkit.objectives.base import EvalResult, Objective

USES = {  # the train.preference settings each loss reads (others must keep their defaults)
    "dpo": {"beta", "label_smoothing", "precompute_reference", "sft_weight"},
    "ipo": {"beta", "precompute_reference", "sft_weight"},
    "simpo": {"beta", "label_smoothing", "simpo_gamma", "sft_weight"},
    "orpo": {"orpo_alpha"},
    "kto": {"beta", "kto_desirable_weight", "kto_undesirable_weight", "precompute_reference"},
}
REFERENCE_LOSSES = ("dpo", "ipo", "kto")


def token_logps(model: Any, ids: Any, labels: Any, attention: Any, chunked: bool = False,
                temperature: float = 1.0) -> Any:
    """The log-probability of each labelled token (R, T), 0 elsewhere, in fp32, from the logits
    divided by ``temperature``. ``chunked``: through the output head in chunks of tokens where the
    model allows it (``head_loss.linear_token_logprobs``: the (R, T, V) logits are never made)."""
    import torch

    from llmkit.objectives.head_loss import deferred_head, linear_token_logprobs, output_head

    valid = labels != IGNORE
    head = output_head(model) if chunked else None
    if head is not None:
        with deferred_head(head):
            hidden = model(input_ids=ids, attention_mask=attention).logits
        if temperature != 1.0:
            hidden = hidden / temperature  # (h / t) W^T = (h W^T) / t: the head has no bias
        picked = linear_token_logprobs(hidden.reshape(-1, hidden.size(-1)), head.weight, labels.reshape(-1))
        return picked.view(labels.shape)
    logits = model(input_ids=ids, attention_mask=attention).logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.gather(logits.log_softmax(-1), -1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * valid


def sequence_logps(model: Any, ids: Any, labels: Any, attention: Any, chunked: bool = False) -> tuple[Any, Any]:
    """(summed log-probability of each row's labelled tokens (R,), their count (R,)), in fp32
    (``token_logps`` summed)."""
    return token_logps(model, ids, labels, attention, chunked).sum(-1), (labels != IGNORE).sum(-1)


def peft_model(model: Any) -> Any:
    """The peft model inside ``model``'s wrappers (DDP, torch.compile), or None."""
    for _ in range(4):
        if model is None or hasattr(model, "disable_adapter"):
            return model
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
    return None


@dataclass
class Reference:
    """How the reference log-probabilities of a batch are had: ``adapters_off`` (the policy with
    its LoRA adapters disabled), ``copy`` (a frozen model), ``precomputed`` (``ref_logps`` in the
    batch) or ``none`` (losses without one)."""

    kind: str = "none"
    model: Any = None

    def logps(self, policy: Any, ids: Any, labels: Any, attention: Any, batch: dict[str, Any], key: str,
              chunked: bool = False) -> Any:
        import torch

        if self.kind == "precomputed":
            return batch[key]
        with torch.no_grad():
            if self.kind == "copy":
                return sequence_logps(self.model, ids, labels, attention, chunked)[0]
            peft = peft_model(policy)
            with peft.disable_adapter():
                return sequence_logps(peft, ids, labels, attention, chunked)[0]

    def describe(self) -> str:
        return {"none": "none (the loss has no reference)", "adapters_off": "the model with its LoRA adapters disabled",
                "copy": "a frozen copy of the starting weights",
                "precomputed": "log-probabilities computed before step 1 (reference/)"}[self.kind]


class PreferenceMetrics:
    """Sums of the per-example statistics of an evaluation pass (see ``Preference.stats``)."""

    def __init__(self, objective: Preference) -> None:
        self.objective, self.loss_sum, self.count, self.sums = objective, 0.0, 0, {}

    def add(self, batch: dict[str, Any], loss: float, count: int, out: Any) -> None:
        self.loss_sum += loss * count
        self.count += count
        for k, (num, den) in self.objective.step_metrics(out).items():
            a, b = self.sums.get(k, (0.0, 0.0))
            self.sums[k] = (a + num, b + den)

    def result(self) -> EvalResult:
        extra = {f"val_{k}": num / den for k, (num, den) in self.sums.items() if den}
        return EvalResult(self.loss_sum / max(self.count, 1), self.count, extra=extra)


@dataclass
class Preference(Objective):
    """Chosen over rejected answers; ``settings`` is the run's ``train.preference``."""

    settings: PreferenceConfig = field(default_factory=PreferenceConfig)
    reference: Reference = field(default_factory=Reference)

    name = "preference"
    head = "causal_lm"
    generates = True
    section = "preference"

    def check(self, cfg: RunConfig) -> None:
        p = cfg.train.preference
        defaults = PreferenceConfig()
        unused = [k for k in PreferenceConfig.model_fields if k != "loss" and k not in USES[p.loss]
                  and getattr(p, k) != getattr(defaults, k)]
        if unused:
            raise ConfigError(f"train.preference.{unused[0]} is set, but the {p.loss} loss does not use it",
                              f"{p.loss} reads: {', '.join(sorted(USES[p.loss]))}",
                              f"remove train.preference.{unused[0]}, or choose the loss that uses it")
        if p.loss == "kto" and p.precompute_reference is True:
            raise ConfigError("train.preference.precompute_reference: true does not apply to kto",
                              "KTO's KL term pairs each prompt with another answer of its micro-batch, which "
                              "changes with the data order, so its reference log-probabilities cannot be computed "
                              "ahead", "set precompute_reference: auto or false")
        if cfg.data.sft_packing:
            raise ConfigError("data.sft_packing is set on a preference run", "preference pairs are padded, one "
                              "answer a row", "remove data.sft_packing")

    def batches(self, cfg: RunConfig, run_root: Path, micro: int, rank: int = 0, world: int = 1) -> Any:
        from llmkit.data.batches import PreferenceBatches

        return PreferenceBatches(cfg, run_root, micro, rank, world)

    def for_run(self, cfg: RunConfig, run_root: Path, model: Any, data: Any, device: Any, precision: str,
                log: Callable[[str], None], starting: bool = True, is_main: bool = True) -> Preference:
        """This objective with the run's settings and its reference (see the module docstring):
        ``model`` is the starting policy (``starting``) or a trained one (``llmkit eval``)."""
        from llmkit.objectives import reference as ref_

        p = cfg.train.preference
        bound = Preference(settings=p)
        if p.loss not in REFERENCE_LOSSES:
            return bound
        bound.reference = ref_.choose(cfg, run_root, model, data, device, precision, log, starting, is_main)
        log(f"preference: {p.loss}, reference = {bound.reference.describe()}")
        return bound

    def standalone(self) -> Objective:
        """Next-token loss on the answers (both of each pair): needs no reference."""
        from llmkit.objectives import get

        return get("lm")

    def loss(self, model: Any, batch: dict[str, Any], chunked: bool = False) -> tuple[Any, int, Any]:
        if self.settings.loss == "kto":
            return self._kto(model, batch, chunked)
        s = self.settings
        lp, n = sequence_logps(model, batch["input_ids"], batch["labels"], batch["attention_mask"], chunked)
        half = lp.shape[0] // 2
        (lp_c, lp_r), (n_c, n_r) = (lp[:half], lp[half:]), (n[:half], n[half:])
        chosen_nll = -lp_c.sum() / n_c.sum().clamp(min=1)  # the chosen answers' SFT loss, a token mean
        extra = s.sft_weight * chosen_nll if s.sft_weight else 0.0
        if s.loss in ("dpo", "ipo"):
            ref = self.reference.logps(model, batch["input_ids"], batch["labels"], batch["attention_mask"], batch,
                                       "ref_logps", chunked)
            ref_c, ref_r = ref[:half].float(), ref[half:].float()
            if s.loss == "dpo":
                per, rc, rr = losses.dpo(lp_c, lp_r, ref_c, ref_r, s.beta, s.label_smoothing)
            else:
                per, rc, rr = losses.ipo(lp_c, lp_r, ref_c, ref_r, n_c, n_r, s.beta)
        elif s.loss == "simpo":
            per, rc, rr = losses.simpo(lp_c, lp_r, n_c, n_r, s.beta, s.simpo_gamma, s.label_smoothing)
        else:
            per, rc, rr = losses.orpo(lp_c, lp_r, n_c, n_r, s.orpo_alpha)
            extra = chosen_nll
        out = {"rc": rc, "rr": rr, "lp_c": lp_c.detach(), "n_c": n_c, "lp_r": lp_r.detach(), "n_r": n_r}
        return per.mean() + extra, half, out

    def _kto(self, model: Any, batch: dict[str, Any], chunked: bool) -> tuple[Any, int, Any]:
        import torch

        s = self.settings
        ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
        lp, n = sequence_logps(model, ids, labels, attention, chunked)
        ref = self.reference.logps(model, ids, labels, attention, batch, "ref_logps", chunked).float()
        kl_args = (batch["kl_input_ids"], batch["kl_labels"], batch["kl_attention_mask"])
        with torch.no_grad():
            kl_policy = sequence_logps(model, *kl_args, chunked)[0]
        kl_ref = self.reference.logps(model, *kl_args, batch, "ref_kl_logps", chunked).float()
        kl = (kl_policy - kl_ref).mean().clamp(min=0)
        good = batch["kto_label"].bool()
        per, rewards = losses.kto(lp, ref, good, kl, s.beta, s.kto_desirable_weight, s.kto_undesirable_weight)
        out = {"rewards": rewards, "good": good, "lp": lp.detach(), "n": n, "kl": kl.detach()}
        return per.mean(), int(ids.shape[0]), out

    def loss_weight(self, batch: dict[str, Any]) -> int:
        rows = int(batch["input_ids"].shape[0])
        return rows if self.settings.loss == "kto" else rows // 2

    def example_losses(self, model: Any, batch: dict[str, Any]) -> Any:
        raise ConfigError("privacy.dp does not cover preference tuning", "", "train without privacy.dp")

    def step_metrics(self, out: Any) -> dict[str, tuple[float, float]]:
        """(sum, count) of each per-example statistic of one micro-batch: rewards of the chosen and
        rejected answers, reward accuracy (ties half) and margin, the per-token log-likelihood of
        the chosen and rejected answers (and KTO's KL estimate)."""
        if "good" in out:
            good = out["good"]
            return {"rewards_chosen": (float(out["rewards"][good].sum()), float(good.sum())),
                    "rewards_rejected": (float(out["rewards"][~good].sum()), float((~good).sum())),
                    "logp_chosen": (float(out["lp"][good].sum()), float(out["n"][good].sum())),
                    "logp_rejected": (float(out["lp"][~good].sum()), float(out["n"][~good].sum())),
                    "kl": (float(out["kl"]), 1.0)}
        rc, rr = out["rc"], out["rr"]
        pairs = float(rc.numel())
        right = (rc > rr).float() + 0.5 * (rc == rr).float()
        return {"rewards_chosen": (float(rc.sum()), pairs), "rewards_rejected": (float(rr.sum()), pairs),
                "reward_accuracy": (float(right.sum()), pairs), "reward_margin": (float((rc - rr).sum()), pairs),
                "logp_chosen": (float(out["lp_c"].sum()), float(out["n_c"].sum())),
                "logp_rejected": (float(out["lp_r"].sum()), float(out["n_r"].sum()))}

    def metrics(self, data: Any, tokenizer: Any = None) -> PreferenceMetrics:
        return PreferenceMetrics(self)

    def report(self, result: EvalResult, data: Any) -> dict[str, Any]:
        return {**result.metrics(), "val_examples": result.count, "loss": self.settings.loss,
                "reference": self.reference.kind}


OBJECTIVE = Preference()
