"""Preference losses on sequence log-probabilities (the policy's, and the reference's where the loss
has one). Pure functions of tensors: ``tests/unit/objectives/test_preference_trl.py`` checks each
against TRL's own on the same model and batch.

Notation: ``lp_c``/``lp_r`` are the summed log-probabilities of the chosen and rejected answers'
tokens (P,), ``n_c``/``n_r`` their token counts, ``ref_*`` the reference's. Each function returns
(per-example losses (P,), chosen rewards (P,), rejected rewards (P,)); rewards are detached.

- dpo: -(1-e) log s(b D) - e log s(-b D), D = (lp_c - ref_c) - (lp_r - ref_r); e = label_smoothing
  (conservative DPO), b = beta. Rewards b (lp - ref).
- ipo: (D' - 1 / (2 b))^2 with D' the log-ratio difference per answer token (IPO's tau = b).
- simpo: the dpo form on b (lp_c / n_c - lp_r / n_r - gamma / b), no reference. Rewards b lp / n.
- orpo: the chosen answers' mean token NLL - a * mean log s(log odds(c) - log odds(r)), odds of the
  per-token mean probability p: p / (1 - p). No reference. Rewards a lp / n.
- dpo, ipo and simpo may add ``sft_weight`` x the chosen answers' mean token NLL (RPO); the caller does.
- kto: desirable w_d (1 - s(b (r - z))), undesirable w_u (1 - s(b (z - r))), r = lp - ref, z the
  batch's mean KL estimate (mismatched prompt/answer pairs), detached and clamped at 0.
"""

from __future__ import annotations

from typing import Any


def _smoothed(logits: Any, beta: float, smoothing: float) -> Any:
    import torch.nn.functional as F

    return -(1 - smoothing) * F.logsigmoid(beta * logits) - smoothing * F.logsigmoid(-beta * logits)


def dpo(lp_c: Any, lp_r: Any, ref_c: Any, ref_r: Any, beta: float, smoothing: float = 0.0) -> tuple[Any, Any, Any]:
    ratio_c, ratio_r = lp_c - ref_c, lp_r - ref_r
    return _smoothed(ratio_c - ratio_r, beta, smoothing), beta * ratio_c.detach(), beta * ratio_r.detach()


def ipo(lp_c: Any, lp_r: Any, ref_c: Any, ref_r: Any, n_c: Any, n_r: Any, beta: float) -> tuple[Any, Any, Any]:
    ratio_c, ratio_r = lp_c - ref_c, lp_r - ref_r
    per_token = ratio_c / n_c.clamp(min=1) - ratio_r / n_r.clamp(min=1)
    return (per_token - 1 / (2 * beta)) ** 2, beta * ratio_c.detach(), beta * ratio_r.detach()


def simpo(lp_c: Any, lp_r: Any, n_c: Any, n_r: Any, beta: float, gamma: float,
          smoothing: float = 0.0) -> tuple[Any, Any, Any]:
    mean_c, mean_r = lp_c / n_c.clamp(min=1), lp_r / n_r.clamp(min=1)
    return _smoothed(mean_c - mean_r - gamma / beta, beta, smoothing), beta * mean_c.detach(), beta * mean_r.detach()


def _log1mexp(x: Any) -> Any:
    """log(1 - exp(x)) for x < 0, accurate at both ends."""
    import math

    import torch

    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo(lp_c: Any, lp_r: Any, n_c: Any, n_r: Any, alpha: float) -> tuple[Any, Any, Any]:
    """Per-example odds-ratio terms (the caller adds the chosen answers' NLL, a token mean)."""
    import torch.nn.functional as F

    mean_c, mean_r = lp_c.float() / n_c.clamp(min=1), lp_r.float() / n_r.clamp(min=1)
    log_odds = (mean_c - mean_r) - (_log1mexp(mean_c) - _log1mexp(mean_r))
    return -alpha * F.logsigmoid(log_odds), alpha * mean_c.detach(), alpha * mean_r.detach()


def kto(lp: Any, ref: Any, desirable: Any, kl: Any, beta: float, w_desirable: float,
        w_undesirable: float) -> tuple[Any, Any]:
    """(per-example losses (B,), rewards (B,)) of answers labelled ``desirable`` (B,) bool, against
    the KL estimate ``kl`` (a detached scalar, already clamped at 0)."""
    import torch

    ratio = lp - ref
    good = w_desirable * (1 - torch.sigmoid(beta * (ratio - kl)))
    bad = w_undesirable * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable, good, bad), beta * ratio.detach()
