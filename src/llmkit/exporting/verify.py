"""`llmkit verify`: the model users take elsewhere behaves exactly as the one they evaluated.

For each of the run's fixed eval prompts (chat-rendered for SFT runs), compares:

- (a) the run's model as llmkit serves it (llmkit's loader and decode loop);
- (b) the exported directory loaded with plain ``transformers`` (AutoTokenizer, AutoModel,
  ``generate``): same token ids for the prompt, same greedy tokens, and the largest absolute
  difference of the prompt's logits;
- (c) optionally a running OpenAI-compatible endpoint: same greedy text, and its perplexity on the
  run's held-out text against the fp32 model's (``exporting.endpoint_check``: an endpoint serving
  bf16, int8 or int4 is judged by that ratio instead of the greedy text);
- (d) optionally a GGUF file run by llama.cpp (``llama-cpp-python``): the same token ids as the HF
  tokenizer on sample texts (punctuation, digits, code, CJK, emoji, special tokens), the greedy
  tokens (stopping at the end tokens the GGUF declares) and, for a quantized file, its perplexity
  on the run's held-out text against the fp32 model's (``exporting.gguf_check``);
- (e) for a LoRA run on a bf16 or quantized base: the adapters on that base, loaded again, against
  the merged model (``MergeCheck``, recorded beside the verdict).

The export's ``generate()`` runs with its own generation_config (as a user's would): it must stop
at the end of an assistant turn by itself.

Tolerance (documented): logits may differ by at most ``tolerance`` (default 1e-4, for fp32
exports; a bf16/fp16 export needs a larger one, e.g. 0.1, and may legitimately change greedy
tokens). Any prompt-token, special-token or greedy-output mismatch fails the check (exit 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.exporting.endpoint_check import EndpointPpl, check_endpoint_ppl
from llmkit.exporting.gguf_check import GgufCheck, check_gguf
from llmkit.rundir import RunDir

NEW_TOKENS = 24
SAMPLE_TEXTS = ("x = (1, 2)  # a tuple", "def f(a, b):\n    return a**2 + b // 3\n", "Pi is 3.14159; 1,000,000 and 2024-11-29!",
                "数字と漢字、中文标点。", "emoji 🙂👍🏽, accents: über café e\u0301", "  spaces\tand\ttabs\n\n\nnewlines  ",
                "<|im_start|>user\nhi<|im_end|>\n")


@dataclass
class PromptCheck:
    prompt: str
    tokens_equal: bool
    greedy_equal: bool
    max_logit_diff: float
    endpoint_equal: bool | None = None
    detail: str = ""


@dataclass
class Bf16Check:
    """The run's model decoding in bf16 (``serve.dtype: bf16``) against itself in fp32: recorded,
    not part of the verdict (bf16 may legitimately change a greedy token)."""

    max_logit_diff: float
    prompts_same: int  # prompts whose greedy continuation is identical
    prompts: int
    tokens_same: int  # greedy tokens equal before the first difference, summed over prompts
    tokens: int


@dataclass
class MergeCheck:
    """A LoRA run on a bf16 or quantized base (model.lora.base_bits < 32): the adapters on the base
    as it trained (loaded again here, quantized by bitsandbytes) against the merged model the run
    exports, on the prompts; and the validation result of each, recorded when final/ was written.
    Recorded, not part of the verdict: merging changes the arithmetic (fp32 instead of the base's
    compute dtype), not the weights."""

    base_bits: int
    max_logit_diff: float
    trained: dict[str, float]
    merged: dict[str, float]


@dataclass
class VerifyReport:
    checks: list[PromptCheck] = field(default_factory=list)
    special_tokens_equal: bool = True
    special_detail: str = ""
    tolerance: float = 1e-4
    gguf: GgufCheck | None = None
    bf16: Bf16Check | None = None
    merge: MergeCheck | None = None

    endpoint: EndpointPpl | None = None

    @property
    def ok(self) -> bool:
        exact = self.endpoint is None or self.endpoint.exact  # a bf16/int8/int4 endpoint is judged by perplexity
        return self.special_tokens_equal and all(
            c.tokens_equal and c.greedy_equal and c.max_logit_diff <= self.tolerance
            and (c.endpoint_equal is not False or not exact) for c in self.checks) and (
            self.gguf is None or self.gguf.ok) and (self.endpoint is None or self.endpoint.ok)


def _prompts(run: Path, tokenizer: Any) -> tuple[list[str], bool]:
    paths = RunDir(run)
    if paths.config.exists():
        cfg = paths.load_config()
        return list(cfg.eval.sample_prompts), cfg.train.task in ("sft", "preference", "rl")
    return ["The", "A class is"], False


def _render(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if chat:
        return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=False))
    return tokenizer.encode(prompt, add_special_tokens=False)


def _endpoint_text(url: str, model: str, prompt_text: str, chat: bool, api_key: str | None) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if chat:
        body = {"model": model, "messages": [{"role": "user", "content": prompt_text}], "max_tokens": NEW_TOKENS,
                "temperature": 0}
        r = httpx.post(url.rstrip("/") + "/v1/chat/completions", json=body, headers=headers, timeout=120)
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]
    body = {"model": model, "prompt": prompt_text, "max_tokens": NEW_TOKENS, "temperature": 0}
    r = httpx.post(url.rstrip("/") + "/v1/completions", json=body, headers=headers, timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["text"]


def verify(run: Path, exported: Path, endpoint: str | None = None, endpoint_model: str | None = None,
           tolerance: float = 1e-4, api_key: str | None = None, gguf: Path | None = None,
           bf16: bool = False) -> VerifyReport:
    """Compare the run's model with its export (and an endpoint); see the module docstring."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.generate.decode import context_length, generate
    from llmkit.generate.sampling import SamplingParams
    from llmkit.model.load import load_for_inference

    if not (exported / "config.json").exists():
        raise UsageError(f"{exported} is not an exported model directory (no config.json)", "",
                         "make one with: llmkit export RUN --format hf --out DIR")
    ours, our_tok, _ = load_for_inference(run, device="cpu")
    theirs = AutoModelForCausalLM.from_pretrained(str(exported), local_files_only=True).eval()
    their_tok = AutoTokenizer.from_pretrained(str(exported), local_files_only=True)
    report = VerifyReport(tolerance=tolerance)
    specials = [(name, getattr(our_tok, name), getattr(their_tok, name))
                for name in ("eos_token", "pad_token", "eos_token_id", "pad_token_id", "chat_template")]
    mismatched = [f"{n}: {a!r} vs {b!r}" for n, a, b in specials if a != b]
    if len(our_tok) != len(their_tok):
        mismatched.append(f"vocabulary: {len(our_tok)} vs {len(their_tok)} tokens")
    report.special_tokens_equal, report.special_detail = not mismatched, "; ".join(mismatched)[:500]
    prompts, chat = _prompts(run, our_tok)
    name = endpoint_model or run.name
    ran: list[tuple[list[int], list[int], int]] = []
    for text in prompts:
        a_ids = _render(our_tok, text, chat)
        try:
            b_ids = _render(their_tok, text, chat)
        except Exception as exc:  # a broken chat template in the export, for instance
            report.checks.append(PromptCheck(text, False, False, float("inf"), detail=f"export cannot render: {exc}"[:300]))
            continue
        check = PromptCheck(text, a_ids == b_ids, False, float("inf"))
        new = min(NEW_TOKENS, context_length(ours) - len(a_ids))  # both stop at the context window
        with torch.inference_mode():
            la = ours(input_ids=torch.tensor([a_ids])).logits.float()
            lb = theirs(input_ids=torch.tensor([a_ids])).logits.float()
            check.max_logit_diff = float((la - lb).abs().max()) if la.shape == lb.shape else float("inf")
            mine = generate(ours, our_tok, [a_ids], [SamplingParams(max_new_tokens=new, temperature=0)])[0]
            # the export's own generation_config decides where generate() stops, as for any user
            out = theirs.generate(torch.tensor([b_ids]), attention_mask=torch.ones(1, len(b_ids), dtype=torch.long),
                                  max_new_tokens=new, do_sample=False, pad_token_id=their_tok.pad_token_id)
        ends = theirs.generation_config.eos_token_id
        ends = set(ends if isinstance(ends, list) else [ends])
        hf_tokens = out[0, len(b_ids):].tolist()
        if hf_tokens and hf_tokens[-1] in ends:
            hf_tokens = hf_tokens[:-1]
        ran.append((a_ids, mine.token_ids, new))
        check.greedy_equal = hf_tokens == mine.token_ids
        if not check.greedy_equal:
            check.detail = f"llmkit {our_tok.decode(mine.token_ids)!r} vs transformers {their_tok.decode(hf_tokens)!r}"[:400]
        if endpoint:
            remote = _endpoint_text(endpoint, name, text, chat, api_key)
            check.endpoint_equal = remote == mine.text
            if not check.endpoint_equal:
                check.detail += f" endpoint {remote!r} vs {mine.text!r}"[:400]
        report.checks.append(check)
    if gguf is not None and ran:
        report.gguf = check_gguf(gguf, our_tok, [r[0] for r in ran], [r[1] for r in ran], min(r[2] for r in ran),
                                 model=ours, run=run)
    if endpoint:
        report.endpoint = check_endpoint_ppl(endpoint, name, api_key, run, ours)
    if bf16 and ran:
        report.bf16 = check_bf16(ours, our_tok, ran)
    report.merge = check_merge(run, ours, ran)
    return report


def check_merge(run: Path, merged: Any, ran: list[tuple[list[int], list[int], int]]) -> MergeCheck | None:
    """``MergeCheck`` for a run whose final/ records a merge into a bf16 or quantized base."""
    import torch

    from llmkit.hub import resolve
    from llmkit.model.build import load_model
    from llmkit.optional import require

    paths = RunDir(run)
    info_file = paths.final / "llmkit.json"
    if not (info_file.exists() and (paths.final / "adapter").is_dir() and paths.config.exists() and ran):
        return None
    try:
        recorded = json.loads(info_file.read_text(encoding="utf-8")).get("merge")
    except (UnicodeDecodeError, json.JSONDecodeError):  # an encrypted run's sealed file
        return None
    if not recorded:
        return None
    cfg = paths.load_config()
    peft = require("peft", "lora", "verify of a LoRA run")
    base = resolve(cfg.model.from_pretrained, "model", cfg.hub_token_env, cfg.model.allow_pickle_weights)
    model = load_model(base.path, cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle_weights,
                       base_bits=recorded["base_bits"], device="cpu")
    trained = peft.PeftModel.from_pretrained(model, str(paths.final / "adapter")).eval()
    worst = 0.0
    with torch.inference_mode():
        for ids, _tokens, _new in ran:
            a = trained(input_ids=torch.tensor([ids])).logits.float()
            b = merged(input_ids=torch.tensor([ids])).logits.float()
            worst = max(worst, float((a - b).abs().max()))
    return MergeCheck(recorded["base_bits"], worst, recorded.get("trained", {}), recorded.get("merged", {}))


def check_bf16(model: Any, tokenizer: Any, ran: list[tuple[list[int], list[int], int]]) -> Bf16Check:
    """``model`` (fp32) copied to bf16 and run as ``serve.dtype: bf16`` runs it: the largest logit
    difference over the prompts and how many greedy tokens stay the same."""
    import copy

    import torch

    from llmkit.generate.decode import generate
    from llmkit.generate.sampling import SamplingParams

    half = copy.deepcopy(model).to(torch.bfloat16)
    worst, same_prompts, same_tokens, total = 0.0, 0, 0, 0
    for ids, fp32_tokens, new in ran:
        with torch.inference_mode():
            a = model(input_ids=torch.tensor([ids])).logits.float()
            b = half(input_ids=torch.tensor([ids])).logits.float()
        worst = max(worst, float((a - b).abs().max()))
        got = generate(half, tokenizer, [ids], [SamplingParams(max_new_tokens=new, temperature=0)])[0].token_ids
        same_prompts += got == fp32_tokens
        lead = next((i for i, (x, y) in enumerate(zip(got, fp32_tokens)) if x != y), min(len(got), len(fp32_tokens)))
        same_tokens += lead
        total += len(fp32_tokens)
    return Bf16Check(worst, same_prompts, len(ran), same_tokens, total)


def render(report: VerifyReport) -> str:
    """A table a person reads, ending with the verdict."""
    lines = [f"special tokens and chat template: {'same' if report.special_tokens_equal else 'DIFFERENT: ' + report.special_detail}"]
    for c in report.checks:
        endpoint = "" if c.endpoint_equal is None else f" | endpoint {'same' if c.endpoint_equal else 'DIFFERENT'}"
        lines.append(f"{json.dumps(c.prompt)[:40]:42} prompt tokens {'same' if c.tokens_equal else 'DIFFERENT'} | greedy "
                     f"{'same' if c.greedy_equal else 'DIFFERENT'} | max logit diff {c.max_logit_diff:.2e}{endpoint}"
                     + (f"\n    {c.detail}" if c.detail else ""))
    if report.gguf is not None:
        lines.append(report.gguf.line(len(SAMPLE_TEXTS)))
    if report.endpoint is not None:
        lines.append(report.endpoint.line())
    if report.bf16 is not None:
        b = report.bf16
        lines.append(f"bf16 decode vs fp32 (serve.dtype bf16; not part of the verdict): max logit diff "
                     f"{b.max_logit_diff:.2e} | greedy same on {b.prompts_same}/{b.prompts} prompts, "
                     f"{b.tokens_same}/{b.tokens} tokens before the first difference")
    if report.merge is not None:
        m = report.merge
        held = ", ".join(f"{k} {m.trained[k]:.4g} -> {m.merged[k]:.4g}" for k in m.trained if k in m.merged)
        lines.append(f"LoRA merged from a {m.base_bits}-bit base (not part of the verdict): adapters on the "
                     f"{m.base_bits}-bit base vs the merged fp32 model, max logit diff {m.max_logit_diff:.2e} on the "
                     f"prompts; validation, trained -> merged: {held or 'not recorded'}")
    lines.append(f"verdict: {'PASS' if report.ok else 'FAIL'} (tolerance {report.tolerance:g} on logits)")
    return "\n".join(lines)
