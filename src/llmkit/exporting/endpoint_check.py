"""`llmkit verify --endpoint URL`: how far the served model is from the fp32 model it came from.

The server says what it serves (``dtype`` on ``GET /v1/models``: llmkit's serve.dtype). On the
run's held-out text (``gguf_check.held_out_windows``) the endpoint scores each window (``echo``
with ``max_tokens: 0`` and ``logprobs: 0``: the log-probability of every prompt token) and the
run's fp32 model scores the same tokens; the ratio of their perplexities is reported.

Verdict: an fp32 endpoint must give the same greedy text as llmkit (the prompt checks); a bf16,
int8 or int4 one may legitimately change a greedy token, so its greedy text is recorded and its
verdict is the perplexity ratio within ``ENDPOINT_PPL_LIMIT`` for its dtype, either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENDPOINT_PPL_LIMIT = {"fp32": 1.001, "bf16": 1.01, "int8": 1.02, "int4": 1.10}


@dataclass
class EndpointPpl:
    dtype: str  # what the endpoint says it serves ("unknown" when it does not say)
    ppl_served: float | None = None
    ppl_model: float | None = None
    tokens: int = 0
    ratio: float | None = None
    detail: str = ""

    @property
    def exact(self) -> bool:
        """Whether the endpoint must match llmkit's greedy text token for token."""
        return self.dtype not in ("bf16", "int8", "int4")

    @property
    def ok(self) -> bool:
        if self.exact:
            return True  # judged by the greedy texts
        limit = ENDPOINT_PPL_LIMIT[self.dtype]
        return self.ratio is not None and 1 / limit <= self.ratio <= limit

    def line(self) -> str:
        if self.ratio is None:
            return f"endpoint ({self.dtype}): perplexity not measured: {self.detail}"
        limit = ENDPOINT_PPL_LIMIT.get(self.dtype)
        judged = (f" (verdict: within {1 / limit:.3f}-{limit})" if limit and not self.exact
                  else " (recorded; the verdict is the greedy text)")
        return (f"endpoint ({self.dtype}): perplexity {self.ppl_served:.4g} vs {self.ppl_model:.4g} (fp32) on "
                f"{self.tokens} held-out tokens: ratio {self.ratio:.4f}{judged}")


def _get(url: str, path: str, api_key: str | None, body: dict[str, Any] | None = None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if body is None:
        r = httpx.get(url.rstrip("/") + path, headers=headers, timeout=60)
    else:
        r = httpx.post(url.rstrip("/") + path, json=body, headers=headers, timeout=300)
    r.raise_for_status()
    return r.json()


def served_dtype(url: str, model: str, api_key: str | None) -> str:
    listed = _get(url, "/v1/models", api_key).get("data", [])
    entry = next((m for m in listed if m.get("id") == model), {})
    return str(entry.get("dtype", "unknown"))


def check_endpoint_ppl(url: str, model_name: str, api_key: str | None, run: Path, model: Any) -> EndpointPpl:
    """The endpoint's perplexity on the run's held-out text beside the fp32 ``model``'s."""
    import httpx

    from llmkit.exporting.gguf_check import held_out_windows, model_nll
    from llmkit.generate.decode import context_length

    result = EndpointPpl(served_dtype(url, model_name, api_key))
    windows = held_out_windows(run, context_length(model) - 1)  # a server keeps room for one new token
    if not windows:
        result.detail = "the run has no held-out text (data/val.bin or data/sft/val.*)"
        return result
    served, count = 0.0, 0
    for ids in windows:
        body = {"model": model_name, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0, "temperature": 0}
        try:
            logprobs = _get(url, "/v1/completions", api_key, body)["choices"][0]["logprobs"]["token_logprobs"]
        except httpx.HTTPStatusError as exc:
            result.detail = f"the endpoint refused to score the prompt tokens (echo with logprobs): {exc.response.text[:300]}"
            return result
        except (KeyError, TypeError, IndexError) as exc:
            result.detail = f"the endpoint's answer has no prompt log-probabilities (echo with logprobs): {exc!r}"[:300]
            return result
        scored = [lp for lp in logprobs[1:len(ids)] if lp is not None]
        if len(scored) != len(ids) - 1:
            result.detail = f"the endpoint scored {len(scored)} of {len(ids) - 1} prompt tokens (echo with logprobs)"
            return result
        served -= sum(scored)
        count += len(scored)
    ours, ours_count = model_nll(model, windows)
    result.ppl_served, result.ppl_model = math.exp(served / count), math.exp(ours / ours_count)
    result.tokens, result.ratio = count, result.ppl_served / result.ppl_model
    return result
