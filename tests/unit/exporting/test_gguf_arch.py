"""The GGUF layout of each architecture (exporting.gguf_arch), checked against gguf-py's own
tables of llama.cpp's tensors for that architecture, and the refusals of variants llama.cpp would
run differently. Running the files in llama.cpp is the `llamacpp` tier (tests/integration/test_gguf_families.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llmkit.errors import UsageError
from llmkit.exporting.gguf_vocab import LLAMA3_SPLIT, QWEN2_SPLIT, pre_tokenizer
from llmkit.exporting.gguf_arch import ARCHITECTURES, architecture, gguf_tensors, permute_rotary, unpermute_rotary

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": False}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 1}),
}


def tiny(kind: str, **over: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A 2-layer config of ``kind`` (as config.json holds it) and its weights by name."""
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=64, n_embd=64, n_layer=2, n_head=4, n_positions=64, **over)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        config_class, model_class, extra = CONFIGS[kind]
        cfg = getattr(transformers, config_class)(vocab_size=64, hidden_size=64, intermediate_size=128,
                                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                  max_position_embeddings=64, **{**extra, **over})
        model = getattr(transformers, model_class)(cfg)
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return cfg.to_dict(), weights


def llama_cpp_names(arch: str, layers: int) -> set[str]:
    """gguf-py's list of the tensors llama.cpp's ``arch`` can load."""
    kind = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = set()
    for tensor in gguf.MODEL_TENSORS[kind]:
        template = gguf.TENSOR_NAMES[tensor]
        names |= {template.format(bid=i) for i in range(layers)} if "{bid}" in template else {template}
    return names


@pytest.mark.parametrize("kind", [*CONFIGS, "gpt2"])
def test_every_tensor_gets_a_name_llama_cpp_loads(kind: str) -> None:
    cfg, weights = tiny(kind)
    arch = architecture(cfg)
    out = dict(gguf_tensors(arch, cfg, weights))
    allowed = llama_cpp_names(arch.gguf, 2)
    assert {n.rsplit(".", 1)[0] for n in out} <= allowed
    assert all(w.dtype == np.float32 or w.dtype == weights_dtype(weights) for w in out.values())
    # every weight is written (the tied head once, as token_embd; GPT-2's output as its own copy)
    learned = [k for k in weights if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    tied = cfg.get("tie_word_embeddings", True)
    assert len(out) == len(learned) - (1 if tied and "lm_head.weight" in weights else 0) + (kind == "gpt2")


def weights_dtype(weights: dict[str, np.ndarray]) -> Any:
    return next(iter(weights.values())).dtype


def test_the_weight_changes_each_architecture_needs() -> None:
    cfg, weights = tiny("gemma2")
    out = dict(gguf_tensors(architecture(cfg), cfg, weights))
    assert np.array_equal(out["blk.0.ffn_norm.weight"], weights["model.layers.0.pre_feedforward_layernorm.weight"] + 1)
    assert np.array_equal(out["blk.1.attn_q.weight"], weights["model.layers.1.self_attn.q_proj.weight"])  # no permutation
    cfg, weights = tiny("llama")
    out = dict(gguf_tensors(architecture(cfg), cfg, weights))
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(out["blk.0.attn_q.weight"], q)
    assert np.array_equal(unpermute_rotary(out["blk.0.attn_q.weight"], 4), q)
    assert np.array_equal(out["blk.0.attn_norm.weight"], weights["model.layers.0.input_layernorm.weight"])
    cfg, weights = tiny("gpt2")
    out = dict(gguf_tensors(architecture(cfg), cfg, weights))
    assert np.array_equal(out["blk.0.attn_qkv.weight"], weights["transformer.h.0.attn.c_attn.weight"].T)
    assert np.array_equal(out["output.weight"], weights["transformer.wte.weight"])


def test_llama_3_1_rope_scaling_travels_as_rope_freqs() -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    cfg, weights = tiny("llama", rope_scaling=scaling)
    out = dict(gguf_tensors(architecture(cfg), cfg, weights))
    factors = out["rope_freqs.weight"]
    assert factors.shape == (8,) and factors[0] == 1.0 and abs(factors[-1] - 8.0) < 1e-5  # high kept, low / 8
    assert np.all(np.diff(factors) >= -1e-6)  # never smaller for a lower frequency
    assert "rope_freqs" in llama_cpp_names("llama", 2)


class _Keys:
    """Records the writer calls write_metadata makes."""

    def __init__(self) -> None:
        self.calls: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.__setitem__(name, args[0] if len(args) == 1 else args)


@pytest.mark.parametrize("kind, scaling, want", [
    ("llama", {"rope_type": "linear", "factor": 4.0}, {"add_rope_scaling_factor": 4.0}),
    ("qwen2", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 16.0},
     {"add_rope_scaling_factor": 4.0, "add_rope_scaling_orig_ctx_len": 16, "add_rope_scaling_yarn_beta_fast": 16.0}),
])
def test_linear_and_yarn_scaling_travel_as_llama_cpp_keys(kind: str, scaling: dict[str, Any], want: dict[str, Any]) -> None:
    from llmkit.exporting.gguf_arch import write_metadata

    cfg, _ = tiny(kind, rope_scaling=scaling)
    keys = _Keys()
    write_metadata(keys, architecture(cfg), cfg)
    assert keys.calls["add_rope_scaling_type"] == getattr(gguf.RopeScalingType, scaling["rope_type"].upper())
    assert {k: keys.calls[k] for k in want} == want


def test_longrope_travels_as_its_factors_and_attention_factor() -> None:
    from llmkit.exporting.gguf_arch import write_metadata

    scaling = {"rope_type": "longrope", "short_factor": [1.0 + i / 10 for i in range(8)],
               "long_factor": [2.0 + i for i in range(8)], "partial_rotary_factor": 1.0}
    cfg, weights = tiny("phi3", rope_scaling=scaling, original_max_position_embeddings=16)
    out = dict(gguf_tensors(architecture(cfg), cfg, weights))
    assert out["rope_factors_long.weight"].tolist() == scaling["long_factor"]
    assert np.allclose(out["rope_factors_short.weight"], scaling["short_factor"])
    assert {"rope_factors_long", "rope_factors_short"} <= llama_cpp_names("phi3", 2)
    keys = _Keys()
    write_metadata(keys, architecture(cfg), cfg)
    # transformers' default: sqrt(1 + ln(64 / 16) / ln(16))
    assert abs(keys.calls["add_rope_scaling_attn_factors"] - (1 + np.log(4) / np.log(16)) ** 0.5) < 1e-9
    assert keys.calls["add_rope_scaling_orig_ctx_len"] == 16


def test_permutation_round_trips() -> None:
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    assert np.array_equal(unpermute_rotary(permute_rotary(w, 2), 2), w)
    assert permute_rotary(np.arange(4.0), 1).tolist() == [0.0, 2.0, 1.0, 3.0]  # halves -> interleaved pairs


@pytest.mark.parametrize("kind, over, words", [
    ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}, "scales its rotary embedding (dynamic)"),
    ("mistral", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
     "scales its rotary embedding (llama3)"),
    ("qwen2", {"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}, "scales its rotary embedding (dynamic)"),
    ("gemma2", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}, "scales its rotary embedding (linear)"),
    ("mistral", {"sliding_window": 16}, "sliding window of 16 tokens"),
    ("gemma2", {"query_pre_attn_scalar": 24}, "1/sqrt(24)"),
    ("gemma2", {"layer_types": ["full_attention", "full_attention"]}, "sliding-window layers"),
    ("gemma3_text", {"rope_local_base_freq": 5000.0}, "base 5000"),
])
def test_variants_llama_cpp_runs_differently_are_refused(kind: str, over: dict[str, Any], words: str) -> None:
    cfg, _ = tiny(kind, **over)
    with pytest.raises(UsageError, match="GGUF export") as refused:
        architecture(cfg)
    assert words in str(refused.value) and "export --format hf" in str(refused.value)


def test_an_unknown_architecture_is_refused_naming_it() -> None:
    with pytest.raises(UsageError, match="does not support the falcon architecture") as refused:
        architecture({"model_type": "falcon"})
    assert all(name in str(refused.value) for name in ARCHITECTURES)


def test_an_unmapped_tensor_is_refused_not_dropped() -> None:
    cfg, weights = tiny("qwen2")
    weights["model.layers.0.self_attn.extra.weight"] = np.zeros(4, np.float32)
    with pytest.raises(UsageError, match="no llama.cpp tensor for model.layers.0.self_attn.extra.weight"):
        list(gguf_tensors(architecture(cfg), cfg, weights))


def test_pre_tokenizers_llama_cpp_knows() -> None:
    def split(regex: str) -> dict[str, Any]:
        return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}}, {"type": "ByteLevel", "use_regex": False}]}}

    assert pre_tokenizer(split(LLAMA3_SPLIT)) == "llama-bpe"
    assert pre_tokenizer(split(QWEN2_SPLIT)) == "qwen2"
    assert pre_tokenizer({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}) == "gpt-2"
    with pytest.raises(UsageError, match="no pre-tokenizer known"):
        pre_tokenizer(split("\\s+"))
