"""Memorization of known secrets ("canaries"), after Carlini et al., "The Secret Sharer" (2019).

A canary is a prefix and a secret that were put into the training data, such as
``{"prefix": "my social security number is ", "secret": "287-65-4321"}`` (a text line
``my social security number is {287-65-4321}`` means the same). For each one:

- **exposure**: the model scores the secret after its prefix (the sum of the secret tokens'
  log-probabilities) and the same for ``candidates`` random secrets of the same format (each
  digit, lower-case and upper-case letter replaced by a random one of its class; everything else
  kept). With rank r of the true secret among them (1 = the most likely), exposure is
  ``log2(candidates + 1) - log2(r)``: about 1 bit for a secret the model has not learnt, up to
  ``log2(candidates + 1)`` for one it ranks first. ``exposure_fit`` extrapolates past that cap
  as the paper does for large spaces: ``-log2 P(X <= x)`` for a normal fitted to the candidates'
  negative log-likelihoods, x the canary's (an estimate: the tail of the real distribution is
  not exactly normal);
- **reproduced**: whether greedy decoding from the prefix writes the secret.

Results name canaries by their index in the file, never by their text (they are secrets).
"""

from __future__ import annotations

import json
import math
import random
import re
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError

_BRACED = re.compile(r"^(?P<prefix>.*)\{(?P<secret>[^{}]+)\}(?P<rest>.*)$")


@dataclass(frozen=True)
class Canary:
    prefix: str
    secret: str


@dataclass
class CanaryResult:
    index: int
    exposure: float
    exposure_max: float
    exposure_fit: float
    rank: int
    candidates: int
    reproduced: bool
    secret_log_likelihood: float


def read_canaries(path: str | Path) -> list[Canary]:
    """Canaries from a JSONL file ({"prefix", "secret"} per line) or a text file (the secret in braces)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"canary file {p} does not exist", "",
                         'give a JSONL file of {"prefix": ..., "secret": ...} lines, or text lines with the secret '
                         "in braces: my code is {4821-0937}")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{\""):
            try:
                row = json.loads(line)
                out.append(Canary(str(row["prefix"]), str(row["secret"])))
                continue
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UsageError(f"{p}:{n} is not a canary", 'a JSON line needs "prefix" and "secret"',
                                 "fix the line") from None
        m = _BRACED.match(line)
        if not m or not m["prefix"].strip():
            raise UsageError(f"{p}:{n} is not a canary", "a text line is a prefix then the secret in braces",
                             "write it as: my code is {4821-0937}")
        out.append(Canary(m["prefix"], m["secret"]))
    if not out:
        raise UsageError(f"{p} holds no canaries", "", "add one canary per line")
    for c in out:
        if not any(ch.isalnum() for ch in c.secret):
            raise UsageError(f"the canary secret {c.secret!r} has no digits or letters",
                             "random candidates of its format would all be the same string",
                             "use secrets with digits or letters")
    return out


def format_space(secret: str) -> float:
    """log2 of how many secrets share the secret's format."""
    bits = 0.0
    for ch in secret:
        if ch.isdigit():
            bits += math.log2(10)
        elif ch in string.ascii_lowercase or ch in string.ascii_uppercase:
            bits += math.log2(26)
    return bits


def random_like(secret: str, rng: random.Random) -> str:
    """A random secret of the same format: digits, a-z and A-Z replaced within their class."""
    out = []
    for ch in secret:
        if ch.isdigit():
            out.append(rng.choice(string.digits))
        elif ch in string.ascii_lowercase:
            out.append(rng.choice(string.ascii_lowercase))
        elif ch in string.ascii_uppercase:
            out.append(rng.choice(string.ascii_uppercase))
        else:
            out.append(ch)
    return "".join(out)


def secret_log_likelihoods(model: Any, tokenizer: Any, prefix: str, secrets: list[str], batch: int = 64) -> list[float]:
    """Sum of log p(secret tokens | prefix) for each secret (natural log)."""
    import torch

    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(secrets), batch):
        rows = []
        for s in secrets[start : start + batch]:
            full = tokenizer.encode(prefix + s, add_special_tokens=False)
            # the prefix's tokens, then the secret's: tokenized together, so a merge across the
            # boundary is scored as the text would be seen in training
            shared = 0
            while shared < min(len(prefix_ids), len(full)) and full[shared] == prefix_ids[shared]:
                shared += 1
            rows.append((full, max(1, shared)))
        width = max(len(r[0]) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (full, _) in enumerate(rows):
            ids[i, : len(full)] = torch.tensor(full)
            mask[i, : len(full)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device))[..., 0].cpu()
        for i, (full, first) in enumerate(rows):
            out.append(float(logp[i, first - 1 : len(full) - 1].sum()))
    return out


def check(model: Any, tokenizer: Any, canaries: list[Canary], candidates: int = 1000, seed: int = 0) -> list[CanaryResult]:
    """Exposure and greedy reproduction of each canary (see the module docstring)."""
    from llmkit.generate.decode import generate
    from llmkit.generate.sampling import SamplingParams

    rng = random.Random(seed)
    results = []
    for index, c in enumerate(canaries):
        space = format_space(c.secret)
        n = min(candidates, max(1, int(2 ** min(space, 62)) - 1))
        pool: set[str] = set()
        while len(pool) < n:
            r = random_like(c.secret, rng)
            if r != c.secret:
                pool.add(r)
        others = sorted(pool)
        scores = secret_log_likelihoods(model, tokenizer, c.prefix, [c.secret, *others])
        mine, rest = scores[0], scores[1:]
        rank = 1 + sum(1 for s in rest if s > mine)
        nll = [-s for s in rest]
        mean = sum(nll) / len(nll)
        sd = math.sqrt(sum((x - mean) ** 2 for x in nll) / max(1, len(nll) - 1)) or 1e-9
        z = (-mine - mean) / sd
        tail = 0.5 * math.erfc(-z / math.sqrt(2))  # P(X <= x): candidates at least as likely
        fit = min(space, -math.log2(max(tail, 1e-300)))
        want = len(tokenizer.encode(c.prefix + c.secret, add_special_tokens=False)) - \
            len(tokenizer.encode(c.prefix, add_special_tokens=False)) + 2
        # a prefix's trailing space belongs to the secret's first token in byte-level BPE: prompt without it
        head = c.prefix.rstrip()
        gap = c.prefix[len(head):]
        prompt = tokenizer.encode(head, add_special_tokens=False)
        text = generate(model, tokenizer, [prompt], [SamplingParams(max_new_tokens=max(want, 4), temperature=0.0,
                                                                    ignore_eos=True)])[0].text
        reproduced = text.startswith(gap + c.secret) if gap else text.startswith(c.secret)
        results.append(CanaryResult(index=index, exposure=math.log2(n + 1) - math.log2(rank),
                                    exposure_max=math.log2(n + 1), exposure_fit=fit, rank=rank, candidates=n,
                                    reproduced=reproduced, secret_log_likelihood=mine))
    return results


def as_json(results: list[CanaryResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
