"""Every architecture llmkit writes as GGUF, run in llama.cpp (llama-cpp-python): tiny random models
of each family (tests/families.py) and of llmkit's gpt2-style presets, exported at f32, f16 and
q4_k_m. The f32 file's logits equal transformers' (so every tensor name, permutation, norm offset
and metadata key is right); the quantized files load, tokenize raw text as the Hugging Face
tokenizer does and generate. A file written wrong on purpose is caught by ``verify --gguf``."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmkit.exporting.gguf import export_gguf
from llmkit.exporting.verify import SAMPLE_TEXTS
from llmkit.exporting.gguf_vocab import for_llama_cpp, space_at_start_only
from tests.families import FAMILIES, SENTENCEPIECE_FAMILIES, make_family, save_with_moved_norms, tokenizer

pytestmark = pytest.mark.llamacpp

TEXT = "def f(a, b):\n    return a**2 + b // 3  # the quick brown fox, 1,000 times. " * 2


def make_gpt2(out: Path) -> Path:
    """A tiny GPT-2 of the shape llmkit's gpt2 presets build, with a byte-level BPE tokenizer."""
    import torch
    import transformers

    tok = tokenizer("qwen3")
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256, n_inner=128,
                                  bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return save_with_moved_norms(transformers.GPT2LMHeadModel(cfg), tok, out, ".ln_")


def make_llama31(out: Path) -> Path:
    """Llama 3 with Llama 3.1's rotary scaling (its original context small, so every frequency moves)."""
    import torch
    import transformers

    from tests.families import model_config

    tok = tokenizer("llama3")
    cfg = model_config("llama3", tok)
    cfg.rope_parameters = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 32, "rope_theta": 10000.0}
    torch.manual_seed(0)
    return save_with_moved_norms(transformers.LlamaForCausalLM(cfg), tok, out, "norm")


MAKERS = {"gpt2": make_gpt2, "llama3.1": make_llama31}


@pytest.mark.parametrize("family", [*FAMILIES, "llama3.1", "gpt2"])
def test_each_architecture_runs_in_llama_cpp(tmp_path: Path, family: str, llama_cpp: Any) -> None:
    import torch
    import transformers

    src = MAKERS[family](tmp_path / "m") if family in MAKERS else make_family(family, tmp_path / "m")
    # as a run's `prepare` keeps it: transformers 5 may rebuild a family's pre-tokenizer on loading
    # (Qwen 2's split, NFC), and tokenizer.json then says what it really does
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    tok.save_pretrained(str(src))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src)).eval()
    ids = tok.encode(TEXT, add_special_tokens=False)[:64]
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].float().numpy()
    nfc = "NFC" in repr(tok.backend_tokenizer.normalizer)
    # f32 within 1e-3 (measured 1.2e-4 to 5.6e-4; Llama 3.1's scaling left out moves them by 6e-3)
    for quant, limit in (("f32", 1e-3), ("f16", None), ("q4_k_m", None)):
        path = export_gguf(src, tmp_path / f"m.{quant}.gguf", quant)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False)
        for text in SAMPLE_TEXTS:
            given = unicodedata.normalize("NFC", text) if nfc else text
            assert llm.tokenize(given.encode(), add_bos=False, special=True) == tok.encode(text, add_special_tokens=False)
        llm.eval(ids)
        got = np.asarray(llm.scores[:len(ids)])
        if limit is not None:
            assert np.abs(got - want).max() < limit, (family, quant, float(np.abs(got - want).max()))
        else:  # near: a quantized random model still ranks the same tokens on top, mostly
            assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95, (family, quant)
        made = [t for _, t in zip(range(8), llm.generate(ids[:8], temp=0.0, top_k=1, reset=True))]
        assert len(made) == 8 and all(0 <= t < len(tok) for t in made)


LONG_TEXT = TEXT * 3
FACTORS = {"short_factor": [1.0 + i / 10 for i in range(8)], "long_factor": [1.0 + i / 2 for i in range(8)],
           "partial_rotary_factor": 1.0}
# name: (family, rotary parameters, other config, tokens scored = llama.cpp's context). llama.cpp picks
# LongRoPE's long or short factors by its context (rounded up to 256) against the original one, where
# transformers picks them by the sequence's length: each case has both on the same side.
SCALINGS = {
    "llama linear": ("llama3", {"rope_type": "linear", "factor": 4.0}, {}, 128),
    "qwen2.5 yarn": ("qwen2.5", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}, {}, 128),
    "qwen3 yarn": ("qwen3", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}, {}, 128),
    "phi3 longrope, long": ("phi3", {"rope_type": "longrope", **FACTORS}, {"original_max_position_embeddings": 64}, 128),
    "phi3 longrope, short": ("phi3", {"rope_type": "longrope", **FACTORS},
                             {"original_max_position_embeddings": 512, "max_position_embeddings": 1024}, 64),
}


@pytest.mark.parametrize("case", SCALINGS)
def test_rotary_scalings_run_in_llama_cpp_as_in_transformers(tmp_path: Path, case: str, llama_cpp: Any) -> None:
    """Linear, YaRN and LongRoPE written as llama.cpp's keys and tensors: the f32 logits equal
    transformers' where the scaling is material (the same weights unscaled differ by far more)."""
    import torch
    import transformers

    from tests.families import model_config

    family, rope, other, count = SCALINGS[case]
    tok = tokenizer(family)
    cfg = model_config(family, tok)
    cfg.rope_parameters = {**rope, "rope_theta": 10000.0}
    for key, value in other.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    model_class = getattr(transformers, FAMILIES[family]["model"])
    scaled = model_class(cfg)
    with torch.no_grad():  # sharper attention, so that positions matter to the logits
        for name, p in scaled.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight")):
                p.mul_(4.0)
    src = save_with_moved_norms(scaled, tok, tmp_path / "m", "norm")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src)).eval()
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0,
                           **({"partial_rotary_factor": 1.0} if family == "phi3" else {})}
    plain = model_class(cfg).eval()
    plain.load_state_dict(model.state_dict())
    ids = tok.encode(LONG_TEXT, add_special_tokens=False)[:count]
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].float().numpy()
        unscaled = plain(torch.tensor([ids])).logits[0].float().numpy()
    llm = llama_cpp.Llama(model_path=str(export_gguf(src, tmp_path / "m.gguf", "f32")), n_ctx=count, logits_all=True,
                          verbose=False)
    llm.eval(ids)
    got = np.asarray(llm.scores[:len(ids)])
    assert len(ids) == count and np.abs(unscaled - want).max() > 1e-2, case  # measured 0.04 to 0.37
    assert np.abs(got - want).max() < 1e-3, (case, float(np.abs(got - want).max()))  # measured 1.4e-4 to 3.4e-4


CHAT = [{"role": "user", "content": "Tell me about the tokenizer, then  two spaces."},
        {"role": "assistant", "content": "It splits text into pieces: 1,000 of them. 🙂"}, {"role": "user", "content": "ok"}]


@pytest.mark.parametrize("family", SENTENCEPIECE_FAMILIES)
def test_sentencepiece_vocabularies_run_in_llama_cpp(tmp_path: Path, family: str, llama_cpp: Any) -> None:
    """The real Mistral, Gemma and Phi-3 tokenizers' kind (SentencePiece BPE with byte fallback,
    converted by transformers from tokenizer.model) goes in as llama.cpp's `llama` vocabulary: the
    sample texts and a chat prompt rendered by the family's template tokenize as in transformers
    (a raw text given the space transformers puts at its start, `gguf_vocab`), the f32 logits are
    transformers', and a q4_k_m file tokenizes the same and generates."""
    import torch
    import transformers

    src = make_family(family, tmp_path / "m", sentencepiece=True)
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src)).eval()
    chat = tok.apply_chat_template(CHAT, tokenize=False)
    start_only = space_at_start_only(tok)
    assert start_only == (not family.startswith("gemma"))  # Gemma's puts no space before the text at all
    ids = tok.encode(TEXT, add_special_tokens=False)[:64]
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].float().numpy()
    for quant in ("f32", "q4_k_m"):
        llm = llama_cpp.Llama(model_path=str(export_gguf(src, tmp_path / f"m.{quant}.gguf", quant)), n_ctx=128,
                              logits_all=True, verbose=False)
        assert llm.metadata["tokenizer.ggml.model"] == "llama"
        for text in SAMPLE_TEXTS:
            given = for_llama_cpp(text, tok, start_only, nfc=False)
            assert llm.tokenize(given.encode(), add_bos=False, special=True) == tok.encode(text, add_special_tokens=False)
        # a chat prompt starts with a special token: given as it is
        assert llm.tokenize(chat.encode(), add_bos=False, special=True) == tok.encode(chat, add_special_tokens=False)
        llm.eval(ids)
        got = np.asarray(llm.scores[:len(ids)])
        if quant == "f32":  # measured 1.2e-4 to 5.5e-4
            assert np.abs(got - want).max() < 1e-3, (family, float(np.abs(got - want).max()))
        made = [t for _, t in zip(range(8), llm.generate(ids[:8], temp=0.0, top_k=1, reset=True))]
        assert len(made) == 8 and all(0 <= t < len(tok) for t in made)


def test_a_sentencepiece_fine_tune_exports_and_verifies_through_the_cli(tmp_path: Path, llama_cpp: Any) -> None:
    """A Mistral with its real tokenizer's kind, fine-tuned through the CLI, exported at q4_k_m and
    verified in llama.cpp: tokenization same, perplexity within q4_k_m's band, PASS."""
    import subprocess
    import sys

    from tests.integration.training.test_families import family_run

    config = family_run(tmp_path, "mistral", 32, steps=3, sentencepiece=True)
    run = tmp_path / "runs" / "mistral"
    for args in (["prepare", "--config", str(config)], ["train", "--config", str(config)],
                 ["export", str(run), "--format", "gguf", "--quant", "q4_k_m", "--out", str(tmp_path / "m.gguf")],
                 ["verify", str(run), "--gguf", str(tmp_path / "m.gguf")]):
        done = subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, timeout=600,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "GGUF (q4_k_m) in llama.cpp: tokenization same" in done.stdout and "verdict: PASS" in done.stdout
    assert "chat prompts (which begin with a special token) tokenize as in training" in done.stdout


def test_verify_catches_a_file_written_wrong(tmp_path: Path, llama_cpp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma's norm convention (w + 1) applied to a llama: llama.cpp loads the file and answers
    wrong; verify --gguf says so (greedy tokens at f32, perplexity at q8_0)."""
    from dataclasses import replace

    import subprocess
    import sys

    from llmkit.exporting import gguf_arch
    from llmkit.exporting.verify import render, verify
    from tests.integration.training.test_families import family_run

    config = family_run(tmp_path, "llama3", 32, steps=3)
    for stage in ("prepare", "train"):
        done = subprocess.run([sys.executable, "-m", "llmkit", stage, "--config", str(config)], capture_output=True,
                              text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "llama3"
    good = verify(run, run / "final", gguf=export_gguf(run / "final", tmp_path / "good.gguf", "q8_0"))
    assert good.ok and good.gguf is not None and good.gguf.ppl_ratio is not None and good.gguf.ppl_ratio < 1.01
    monkeypatch.setitem(gguf_arch.ARCHITECTURES, "llama", replace(gguf_arch.ARCHITECTURES["llama"], norm_plus_one=True))
    for quant in ("f32", "q8_0"):
        bad = verify(run, run / "final", gguf=export_gguf(run / "final", tmp_path / f"bad.{quant}.gguf", quant))
        assert not bad.ok and bad.gguf is not None, render(bad)
        if quant == "f32":
            assert not bad.gguf.greedy_equal, render(bad)
        else:  # outside q8_0's band either way (this one comes out sharper, so lower)
            assert bad.gguf.ppl_ratio is not None and abs(bad.gguf.ppl_ratio - 1) > 0.01, render(bad)


def test_a_failed_quantization_leaves_the_old_file(tmp_path: Path, llama_cpp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmkit.errors import UsageError

    src = make_family("qwen3", tmp_path / "m")
    out = tmp_path / "m.gguf"
    out.write_bytes(b"the user's earlier file")
    monkeypatch.setattr(llama_cpp, "llama_model_quantize", lambda *args: 1)
    with pytest.raises(UsageError, match="could not quantize the model to q4_k_m"):
        export_gguf(src, out, "q4_k_m", overwrite=True)
    assert out.read_bytes() == b"the user's earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.gguf"]  # no temporary file left
