"""Sampling: per-row parameters and pure logit transforms (B, V) -> (B, V).

Every transform takes the logits of a batch and one parameter per row, so rows with different
settings decode together. A row with temperature 0 is greedy (argmax), whatever else is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llmkit.config.schema import GenerateConfig
from llmkit.errors import UsageError


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is sampled and when it stops."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None
    ignore_eos: bool = False  # keep going past end-of-text tokens (benchmarks, forced lengths)
    presence_penalty: float = 0.0  # OpenAI's: minus this from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: minus this times how often the token was generated
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    logprobs: int | None = None  # report each new token's log-probability and this many alternatives
    prompt_logprobs: int | None = None  # also the prompt tokens' (echo); then max_new_tokens may be 0
    grammar: str | None = None  # llguidance grammar the tokens must follow (llmkit.generate.constrain)
    adapter: int = 0  # the LoRA adapter slot the row decodes with (llmkit.model.multilora; 0: the base)

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < (0 if self.prompt_logprobs is not None else 1):
            problems.append(f"max_new_tokens must be > 0 (got {self.max_new_tokens})")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (-2 <= value <= 2):
                problems.append(f"{name} must be within [-2, 2] (got {value})")
        if any(not (-100 <= b <= 100) for _, b in self.logit_bias):
            problems.append("logit_bias values must be within [-100, 100]")
        if not (0 <= self.temperature <= 2) or math.isnan(self.temperature):
            problems.append(f"temperature must be within [0, 2] (got {self.temperature})")
        if self.top_k is not None and self.top_k <= 0:
            problems.append(f"top_k must be > 0 or unset (got {self.top_k})")
        if not (0 < self.top_p <= 1):
            problems.append(f"top_p must be within (0, 1] (got {self.top_p})")
        if not (0.01 <= self.repetition_penalty <= 10):  # smaller divides logits into overflow
            problems.append(f"repetition_penalty must be within [0.01, 10] (got {self.repetition_penalty})")
        if any(not s for s in self.stop):
            problems.append("stop strings must not be empty")
        if self.grammar is not None and self.ignore_eos:
            problems.append("ignore_eos cannot be combined with a grammar (a complete grammar ends the row)")
        if problems:
            raise UsageError("invalid sampling parameters", "; ".join(problems), "fix the values named above")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def counts_tokens(self) -> bool:
        """Whether sampling needs the counts of generated tokens (presence / frequency penalty)."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0

    @property
    def plain(self) -> bool:
        """No logit processing: the raw argmax is the greedy choice."""
        return self.repetition_penalty == 1 and not self.counts_tokens and not self.logit_bias

    @classmethod
    def from_config(cls, defaults: GenerateConfig, **overrides: Any) -> SamplingParams:
        """A run's ``generate`` section as sampling parameters; each override that is not None wins."""
        values: dict[str, Any] = {
            "max_new_tokens": defaults.max_new_tokens, "temperature": defaults.temperature, "top_k": defaults.top_k,
            "top_p": defaults.top_p, "repetition_penalty": defaults.repetition_penalty,
            "stop": tuple(defaults.stop), "seed": defaults.seed,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["stop"] = tuple(values["stop"])
        return cls(**values)


def log_probs(logits: Any) -> Any:
    """Log-probabilities over the vocabulary: fp32 log-softmax of the logits. Every log-probability
    llmkit reports (the server's logprobs and echo, `llmkit eval --task` loglikelihoods) is this."""
    return logits.float().log_softmax(-1)


def apply_logit_bias(logits: Any, params: list[SamplingParams]) -> Any:
    """Add each row's logit_bias (OpenAI's: -100 bans a token, +100 all but forces it)."""
    import torch

    bias = torch.zeros_like(logits)
    for row, sp in enumerate(params):
        if sp.logit_bias:
            ids = torch.tensor([i for i, _ in sp.logit_bias], device=logits.device)
            bias[row, ids] = torch.tensor([b for _, b in sp.logit_bias], device=logits.device, dtype=logits.dtype)
    return logits + bias


def apply_presence_frequency(logits: Any, counts: Any, presence: Any, frequency: Any) -> Any:
    """OpenAI's penalties: logit - count * frequency - (count > 0) * presence, per row; ``counts`` (B, V)
    holds how often each token was generated so far (the prompt does not count)."""
    counts = counts.to(logits.dtype)
    return logits - counts * frequency.to(logits.dtype).unsqueeze(1) - (counts > 0) * presence.to(logits.dtype).unsqueeze(1)


def apply_repetition_penalty(logits: Any, seen: Any, penalty: Any) -> Any:
    """Make tokens already present less likely (CTRL): positive logits / p, negative * p.

    ``seen`` is a (B, V) bool mask of tokens in each row so far; ``penalty`` is (B,).
    """
    import torch

    p = penalty.to(logits.dtype).unsqueeze(1)
    penalized = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalized, logits)


def apply_temperature(logits: Any, temperature: Any) -> Any:
    """Divide by the per-row temperature (rows at 0 are left alone: they are decoded greedily)."""
    t = temperature.to(logits.dtype).clamp_min(1e-6).unsqueeze(1)
    return logits / t


def apply_top_k(logits: Any, k: Any) -> Any:
    """Keep each row's k largest logits (k = 0: keep all)."""
    import torch

    vocab = logits.size(-1)
    k = torch.where(k <= 0, torch.full_like(k, vocab), k.clamp(max=vocab))
    kth = torch.sort(logits, dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: Any, p: Any) -> Any:
    """Keep the smallest set of tokens whose probability reaches p (the top token always stays)."""
    import torch

    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each token
    drop_sorted = before >= p.to(probs.dtype).unsqueeze(1)
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_rows(probs: Any, generators: list[Any]) -> Any:
    """One token for each row of (R, V) probabilities, row r drawn with ``generators[r]``: one
    uniform a row from its own generator (so a row's draw does not depend on the rest of the batch),
    then the inverse of the row's cumulative distribution (float64), for all rows in one search.
    The same distribution as ``torch.multinomial`` row by row, at one small RNG call a row instead
    of a multinomial call a row (which was a third of an RL rollout's time on a CPU at 64 rows)."""
    import torch

    u = torch.stack([torch.rand((), generator=g, device=probs.device, dtype=torch.float64) for g in generators])
    cdf = probs.double().cumsum(-1)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return picked.clamp(max=probs.size(-1) - 1)


def next_tokens(logits: Any, params: list[SamplingParams], seen: Any, generators: list[Any],
                counts: Any = None) -> Any:
    """Choose each row's next token from (B, V) logits under its own parameters.

    Order: logit_bias, presence/frequency penalties, repetition penalty, then (sampled rows)
    temperature, top-k, top-p. ``counts``: (B, V) generated-token counts, needed when a row has a
    presence or frequency penalty.
    """
    import torch

    device = logits.device
    if all(sp.greedy and sp.plain for sp in params):
        return logits.argmax(-1)  # the common fast path: no copies, no sorting
    logits = logits.float()
    if any(sp.logit_bias for sp in params):
        logits = apply_logit_bias(logits, params)
    if any(sp.counts_tokens for sp in params):
        logits = apply_presence_frequency(logits, counts, torch.tensor([sp.presence_penalty for sp in params], device=device),
                                          torch.tensor([sp.frequency_penalty for sp in params], device=device))
    if any(sp.repetition_penalty != 1 for sp in params):
        penalty = torch.tensor([sp.repetition_penalty for sp in params], device=device)
        logits = apply_repetition_penalty(logits, seen, penalty)
    greedy = [sp.greedy for sp in params]
    out = logits.argmax(-1)
    if all(greedy):
        return out
    logits = apply_temperature(logits, torch.tensor([sp.temperature for sp in params], device=device))
    if any(sp.top_k for sp in params):  # each costs a sort of (B, V): only when a row asks
        logits = apply_top_k(logits, torch.tensor([sp.top_k or 0 for sp in params], device=device))
    if any(sp.top_p < 1 for sp in params):
        logits = apply_top_p(logits, torch.tensor([sp.top_p for sp in params], device=device))
    probs = logits.softmax(-1)
    rows = [r for r, g in enumerate(greedy) if not g]
    if len(rows) == len(params):
        return sample_rows(probs, generators)
    out[torch.tensor(rows, device=device)] = sample_rows(probs[rows], [generators[r] for r in rows])
    return out
