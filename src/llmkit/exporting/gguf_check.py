"""`llmkit verify --gguf FILE`: the GGUF run in llama.cpp (llama-cpp-python) against the run's model.

- Tokenization: llama.cpp's ids equal the Hugging Face tokenizer's on ``SAMPLE_TEXTS``.
- Perplexity: llama.cpp's on the run's held-out text (its validation split: the pretraining tokens,
  or the SFT examples each as one window) beside the run's own fp32 model on the same windows, and
  their ratio.
- Greedy agreement: over the run's sample prompts, the share of greedy tokens equal to llmkit's
  before the first difference.

Verdict: an f32 file must agree token for token (tokenization and every greedy token). A
quantized file (f16, bf16, q8_0 and the 4- to 6-bit types) may legitimately change a greedy
token, so its verdict is tokenization equal and the perplexity ratio within ``PPL_RATIO_LIMIT``
for its type, either way (1/limit to limit; documented in the README): quantization or conversion
that garbles a model shows there first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.exporting.gguf_vocab import for_llama_cpp, space_at_start_only

# llama.cpp's general.file_type -> llmkit's --quant name
FILE_TYPES = {0: "f32", 1: "f16", 32: "bf16", 7: "q8_0", 18: "q6_k", 17: "q5_k_m", 15: "q4_k_m", 2: "q4_0"}
# The largest GGUF / fp32 perplexity ratio the verdict accepts, per type.
PPL_RATIO_LIMIT = {"f16": 1.01, "bf16": 1.02, "q8_0": 1.01, "q6_k": 1.03, "q5_k_m": 1.05, "q4_k_m": 1.10, "q4_0": 1.15}
HELD_OUT_TOKENS = 4096  # at most this many held-out tokens are scored
WINDOW = 512  # tokens per perplexity window (or the context, if shorter)


@dataclass
class GgufCheck:
    """llama.cpp on the GGUF file; see the module docstring."""

    tokenize_equal: bool
    greedy_equal: bool
    detail: str = ""
    quant: str = "f32"
    greedy_same: int = 0  # greedy tokens equal to llmkit's before the first difference, summed over prompts
    greedy_total: int = 0
    ppl_gguf: float | None = None
    ppl_model: float | None = None
    ppl_tokens: int = 0
    ppl_ratio: float | None = None  # ppl_gguf / ppl_model
    note: str = ""  # recorded, not part of the verdict

    @property
    def ok(self) -> bool:
        if self.quant == "f32":
            return self.tokenize_equal and self.greedy_equal
        ratio, limit = self.ppl_ratio, PPL_RATIO_LIMIT.get(self.quant, 1.0)
        # both ways: a file much *better* than the model it came from is not the same model either
        return self.tokenize_equal and ratio is not None and 1 / limit <= ratio <= limit

    def line(self, samples: int) -> str:
        parts = [f"GGUF ({self.quant}) in llama.cpp: tokenization {'same' if self.tokenize_equal else 'DIFFERENT'} on "
                 f"{samples} sample texts",
                 f"greedy {'same' if self.greedy_equal else 'DIFFERENT'} ({self.greedy_same}/{self.greedy_total} tokens "
                 "before the first difference)"]
        if self.ppl_ratio is not None:
            limit = PPL_RATIO_LIMIT.get(self.quant)
            parts.append(f"perplexity {self.ppl_gguf:.4g} vs {self.ppl_model:.4g} (fp32) on {self.ppl_tokens} held-out "
                         f"tokens: ratio {self.ppl_ratio:.4f}" + (f" (within {1 / limit:.3f}-{limit})" if limit else ""))
        return (" | ".join(parts) + (f"\n    {self.detail}" if self.detail else "")
                + (f"\n    note: {self.note}" if self.note else ""))


def held_out_windows(run: Path, context: int) -> list[list[int]]:
    """The run's validation tokens as windows of at most ``context`` tokens (empty if it has none)."""
    from llmkit.data.ragged import read_ragged
    from llmkit.data.shards import open_tokens
    from llmkit.rundir import RunDir

    paths = RunDir(run)
    window = max(2, min(WINDOW, context))
    if (paths.data / "val.bin").exists():
        tokens = np.asarray(open_tokens(paths.data, "val")[:HELD_OUT_TOKENS]).astype(np.int64).tolist()
        return [tokens[i:i + window] for i in range(0, len(tokens) - 1, window) if len(tokens[i:i + window]) > 1]
    sft = paths.task_data("sft")
    if (sft / "val.offsets.npy").exists():
        import json

        meta = json.loads((sft / "meta.json").read_text())
        rows = read_ragged(sft, "val", meta["dtype"], with_mask=False)
        out, total = [], 0
        for i in range(len(rows)):
            ids = rows.example(i)[0][:window].astype(np.int64).tolist()
            if len(ids) > 1 and total < HELD_OUT_TOKENS:
                out.append(ids)
                total += len(ids)
        return out
    return []


def _normalizes_nfc(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    return normalizer is not None and "NFC" in repr(normalizer)


def _nll(logits: np.ndarray, ids: list[int]) -> float:
    """Summed negative log-likelihood of ids[1:] under logits[:-1] (float64)."""
    x = logits[:-1].astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(x - top).sum(axis=-1)) + top[:, 0]
    return float((logz - x[np.arange(len(ids) - 1), ids[1:]]).sum())


def model_nll(model: Any, windows: list[list[int]]) -> tuple[float, int]:
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for ids in windows:
            logits = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
            total += _nll(logits, ids)
            count += len(ids) - 1
    return total, count


def check_gguf(path: Path, tokenizer: Any, prompts: list[list[int]], expected: list[list[int]], new: int,
               model: Any = None, run: Path | None = None) -> GgufCheck:
    """Run ``path`` in llama.cpp against the Hugging Face tokenizer, llmkit's greedy tokens
    (``expected``) and, given ``model`` and ``run``, the fp32 model's perplexity on the run's held-out text."""
    from llmkit.exporting.verify import SAMPLE_TEXTS
    from llmkit.optional import require

    llama_cpp = require("llama_cpp", "llamacpp", "verify --gguf (running the file in llama.cpp)")
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    meta = vocab.metadata
    quant = FILE_TYPES.get(int(meta.get("general.file_type", 0)), f"type {meta.get('general.file_type')}")
    context = int(meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", 2048))
    wrong: list[str] = []
    nfc, start_only = _normalizes_nfc(tokenizer), space_at_start_only(tokenizer)
    for text in SAMPLE_TEXTS:
        theirs = vocab.tokenize(for_llama_cpp(text, tokenizer, start_only, nfc).encode(), add_bos=False, special=True)
        ours = tokenizer.encode(text, add_special_tokens=False)
        if theirs != ours:
            wrong.append(f"{text[:30]!r}: llama.cpp {theirs[:12]} vs {ours[:12]}")
    windows = held_out_windows(run, context) if run is not None and model is not None else []
    # the context the checks use, not the model's (a 128k-token model's whole cache would be allocated)
    needed = max([len(w) for w in windows] + [len(p) + new for p in prompts] + [16])
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=min(context, needed + 8), logits_all=bool(windows), verbose=False)
    check = GgufCheck(not wrong, True, quant=quant)
    notes = []
    if nfc:
        notes.append("the tokenizer normalizes text to NFC and llama.cpp does not: NFC-normalize text with decomposed "
                     "characters before giving it to the GGUF (the sample texts were)")
    if start_only:
        notes.append("the tokenizer puts SentencePiece's space only at a text's very start, llama.cpp before every "
                     "piece of text, so the GGUF leaves it out: chat prompts (which begin with a special token) "
                     "tokenize as in training; begin a raw completion prompt with a space (the sample texts were)")
    check.note = "; ".join(notes)
    _greedy(llm, tokenizer, prompts, expected, new, check, wrong)
    if windows:
        ours_nll, count = model_nll(model, windows)
        theirs_nll = 0.0
        for ids in windows:
            llm.reset()
            llm.eval(ids)
            theirs_nll += _nll(np.asarray(llm.scores[:len(ids)]), ids)
        check.ppl_model, check.ppl_gguf, check.ppl_tokens = math.exp(ours_nll / count), math.exp(theirs_nll / count), count
        check.ppl_ratio = check.ppl_gguf / check.ppl_model
    elif quant != "f32":
        wrong.append("no held-out text in the run to measure perplexity on (data/val.bin or data/sft/val.*): "
                     "a quantized file's verdict needs it")
    check.detail = "; ".join(wrong)[:600]
    return check


def _greedy(llm: Any, tokenizer: Any, prompts: list[list[int]], expected: list[list[int]], new: int,
            check: GgufCheck, wrong: list[str]) -> None:
    ends = {llm.token_eos(), *[int(v) for k, v in llm.metadata.items() if k == "tokenizer.ggml.eot_token_id"]}
    for ids, want in zip(prompts, expected):
        got: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if token in ends or len(got) >= new:
                break
            got.append(token)
        want = want[:new]
        same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        check.greedy_same += same
        check.greedy_total += len(want)
        if got != want:
            check.greedy_equal = False
            if check.quant == "f32":
                wrong.append(f"llama.cpp {tokenizer.decode(got)!r} vs llmkit {tokenizer.decode(want)!r}")
