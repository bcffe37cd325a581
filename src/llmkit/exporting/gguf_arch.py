"""The architectures llmkit writes as GGUF: for each Hugging Face ``model_type``, llama.cpp's
architecture name, its tensor names, the metadata its loader reads, and the changes the weights
need on the way (facts of the two formats, checked by running the files in llama.cpp):

- llama, mistral -> ``llama``: the query and key rows permuted from Hugging Face's rotary layout
  (halves) to llama.cpp's (interleaved pairs);
- qwen2 -> ``qwen2`` (query/key/value biases), qwen3 -> ``qwen3`` (query/key norms);
- gemma2 -> ``gemma2``, gemma3_text -> ``gemma3``: every RMSNorm weight + 1 (Gemma's norm scales by
  ``1 + w``; llama.cpp's by ``w``), the extra norms around attention and the MLP;
- phi3 -> ``phi3``: the fused query/key/value and gate/up projections as they are;
- gpt2 -> ``gpt2`` (llmkit's gpt2-style presets): learned positions, LayerNorm with biases, the
  Conv1D weights transposed to (out, in).

Rotary scalings: Llama 3.1's as a ``rope_freqs`` tensor (llama), linear and YaRN as llama.cpp's
``rope.scaling.*`` keys (llama, mistral, qwen2, qwen3), LongRoPE as ``rope_factors_long``/``_short``
and its attention factor (phi3).

Variants llama.cpp would run differently from transformers (another rotary scaling, a sliding-window
layout other than the one llama.cpp assumes, a query scale other than 1/sqrt(head_dim)) are refused
by name rather than written into a file that would answer differently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmkit.errors import UsageError

_HF_INSTEAD = "export --format hf instead (transformers, vLLM run it as it is)"

# Hugging Face per-layer module (under model.layers.N.) -> llama.cpp tensor (under blk.N.)
_LLAMA_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
_QK_NORM = {"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
_GEMMA_LAYER = {**_LLAMA_LAYER, "post_attention_layernorm": "post_attention_norm",
                "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}
_PHI3_LAYER = {"self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output", "mlp.gate_up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
_GPT2_LAYER = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
               "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
_DECODER_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_GPT2_TOP = {"transformer.wte": "token_embd", "transformer.wpe": "position_embd", "transformer.ln_f": "output_norm",
             "lm_head": "output"}


@dataclass(frozen=True)
class GgufArch:
    """How one Hugging Face ``model_type`` becomes a llama.cpp architecture."""

    gguf: str  # llama.cpp's architecture name (general.architecture)
    layer: dict[str, str]  # HF module under the layer prefix -> llama.cpp tensor under blk.N.
    top: dict[str, str] = field(default_factory=lambda: dict(_DECODER_TOP))
    layer_prefix: str = "model.layers."
    permute_qk: bool = False  # llama's rotary layout
    norm_plus_one: bool = False  # Gemma's (1 + w) RMSNorm
    conv1d: bool = False  # GPT-2's Conv1D stores (in, out)
    checks: tuple[Callable[[dict[str, Any]], None], ...] = ()
    extra: Callable[[Any, dict[str, Any]], None] | None = None  # metadata beyond the common keys

    def check(self, cfg: dict[str, Any]) -> None:
        for check in self.checks:
            check(cfg)

    def gguf_name(self, hf_name: str) -> str | None:
        """The llama.cpp name of a Hugging Face tensor; None for buffers llama.cpp rebuilds."""
        module, _, kind = hf_name.rpartition(".")
        if module in self.top:
            return f"{self.top[module]}.{kind}"
        if module.startswith(self.layer_prefix):
            index, _, rest = module[len(self.layer_prefix):].partition(".")
            if rest in self.layer:
                return f"blk.{int(index)}.{self.layer[rest]}.{kind}"
            if self.conv1d and rest == "attn" and kind in ("bias", "masked_bias"):
                return None  # GPT-2's causal-mask buffer in old checkpoints
        raise UsageError(f"GGUF export: no llama.cpp tensor for {hf_name} ({self.gguf} architecture)",
                         "llmkit writes every tensor or none; this one has no name in llama.cpp's layout",
                         _HF_INSTEAD)


def heads(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dimension)."""
    n = cfg.get("num_attention_heads") or cfg["n_head"]
    kv = cfg.get("num_key_value_heads") or n
    dim = cfg.get("head_dim") or (cfg.get("hidden_size") or cfg["n_embd"]) // n
    return int(n), int(kv), int(dim)


def rope_theta(cfg: dict[str, Any], default: float = 10000.0) -> float:
    params = cfg.get("rope_parameters") or {}
    if "full_attention" in params:  # per layer type (Gemma 3 in transformers 5)
        params = params["full_attention"]
    return float(cfg.get("rope_theta") or params.get("rope_theta") or default)


def _rope_types(cfg: dict[str, Any]) -> set[str]:
    found = set()
    for source in (cfg.get("rope_scaling"), cfg.get("rope_parameters")):
        if not isinstance(source, dict):
            continue
        nested = [v for v in source.values() if isinstance(v, dict)]
        for params in nested or [source]:
            found.add(str(params.get("rope_type") or params.get("type") or "default"))
    return found


def rope_types(*allowed: str) -> Callable[[dict[str, Any]], None]:
    """A check refusing rotary scalings other than ``allowed`` (besides none)."""

    def check(cfg: dict[str, Any]) -> None:
        scaled = _rope_types(cfg) - {"default", *allowed}
        if scaled:
            written = f"unscaled rotary embeddings{' and ' + ', '.join(allowed) if allowed else ''}"
            raise UsageError(f"GGUF export: this model scales its rotary embedding ({', '.join(sorted(scaled))})",
                             f"llmkit writes GGUF for {written} here; llama.cpp needs that scaling's own "
                             "tensors and keys", _HF_INSTEAD)
    return check


plain_rope = rope_types()
scaled_rope = rope_types("linear", "yarn")


def rope_scaling(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config's rotary scaling parameters (for Gemma 3, its global layers'); {} when unscaled."""
    for source in (cfg.get("rope_scaling"), cfg.get("rope_parameters")):
        if isinstance(source, dict):
            params = source.get("full_attention", source)
            if isinstance(params, dict) and str(params.get("rope_type") or params.get("type") or "default") != "default":
                return dict(params)
    return {}


def _scaling_type(cfg: dict[str, Any]) -> str:
    params = rope_scaling(cfg)
    return str(params.get("rope_type") or params.get("type") or "default")


def original_context(cfg: dict[str, Any]) -> int:
    params = rope_scaling(cfg)
    return int(params.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings")
               or cfg["max_position_embeddings"])


def rope_tensors(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """Tensors llama.cpp reads a rotary scaling from: Llama 3.1's ``rope_freqs`` (the factor each
    frequency is divided by: the unscaled inverse frequencies over transformers' llama3 ones), or
    LongRoPE's (Phi-3 128k, Phi-3.5) per-frequency long and short factors."""
    kind = _scaling_type(cfg)
    if kind == "longrope":
        params = rope_scaling(cfg)
        return {f"rope_factors_{which}.weight": np.asarray(params[f"{which}_factor"], dtype=np.float32)
                for which in ("long", "short")}
    if kind != "llama3":
        return {}
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig.from_dict(cfg)
    scaled = ROPE_INIT_FUNCTIONS["llama3"](config, None)[0].double().numpy()
    dim = heads(cfg)[2]
    plain = 1.0 / rope_theta(cfg) ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    return {"rope_freqs.weight": (plain / scaled).astype(np.float32)}


def rope_scaling_metadata(writer: Any, cfg: dict[str, Any]) -> None:
    """llama.cpp's ``rope.scaling.*`` keys for linear (position interpolation), YaRN and LongRoPE."""
    import gguf

    kind, params = _scaling_type(cfg), rope_scaling(cfg)
    if kind in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(params["factor"]))
    if kind == "yarn":
        writer.add_rope_scaling_orig_ctx_len(original_context(cfg))
        for key, add in (("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", writer.add_rope_scaling_yarn_beta_slow)):
            if params.get(key) is not None:
                add(float(params[key]))
    if kind == "longrope":  # transformers' default attention factor for LongRoPE, unless the config sets one
        scale = int(cfg["max_position_embeddings"]) / original_context(cfg)
        factor = params.get("attention_factor")
        if factor is None:
            factor = math.sqrt(1 + math.log(scale) / math.log(original_context(cfg))) if scale > 1 else 1.0
        writer.add_rope_scaling_attn_factors(float(factor))


def no_sliding_window(cfg: dict[str, Any]) -> None:
    window = cfg.get("sliding_window")
    if window and cfg.get("use_sliding_window", True) and window < cfg["max_position_embeddings"]:
        raise UsageError(f"GGUF export: this {cfg['model_type']} model attends over a sliding window of {window} tokens",
                         f"llama.cpp's {cfg['model_type']} architecture attends over the whole context", _HF_INSTEAD)


def gemma_query_scale(cfg: dict[str, Any]) -> None:
    dim = heads(cfg)[2]
    scalar = cfg.get("query_pre_attn_scalar") or dim
    if scalar != dim:
        raise UsageError(f"GGUF export: this Gemma scales queries by 1/sqrt({scalar}), not 1/sqrt(head_dim={dim})",
                         "llama.cpp scales a Gemma's queries by 1/sqrt(head_dim) except for the 27B layout", _HF_INSTEAD)


def layer_pattern(every: int) -> Callable[[dict[str, Any]], None]:
    """llama.cpp's Gemma layout: layer i attends over the sliding window unless (i + 1) % every == 0."""

    def check(cfg: dict[str, Any]) -> None:
        types = cfg.get("layer_types")
        want = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(cfg["num_hidden_layers"])]
        if types is not None and list(types) != want:
            raise UsageError(f"GGUF export: this {cfg['model_type']} model's sliding-window layers are {types}",
                             f"llama.cpp's {cfg['model_type']} layout is a sliding-window layer except every {every}th",
                             _HF_INSTEAD)
    return check


def gemma3_local_rope(cfg: dict[str, Any]) -> None:
    params = cfg.get("rope_parameters") or {}
    local = cfg.get("rope_local_base_freq") or (params.get("sliding_attention") or {}).get("rope_theta") or 10000.0
    if float(local) != 10000.0:
        raise UsageError(f"GGUF export: this Gemma 3 rotates its sliding-window layers with base {local}",
                         "llama.cpp's gemma3 uses base 10000 there", _HF_INSTEAD)


def _gemma2_meta(writer: Any, cfg: dict[str, Any]) -> None:
    if cfg.get("attn_logit_softcapping"):
        writer.add_attn_logit_softcapping(float(cfg["attn_logit_softcapping"]))
    if cfg.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
    writer.add_sliding_window(int(cfg.get("sliding_window") or cfg["max_position_embeddings"]))


def _gemma3_meta(writer: Any, cfg: dict[str, Any]) -> None:
    writer.add_sliding_window(int(cfg.get("sliding_window") or cfg["max_position_embeddings"]))
    if cfg.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))


def no_softcap(cfg: dict[str, Any]) -> None:
    if cfg.get("attn_logit_softcapping"):
        raise UsageError("GGUF export: this Gemma 3 caps its attention logits",
                         "llama.cpp's gemma3 does not", _HF_INSTEAD)


def _phi3_meta(writer: Any, cfg: dict[str, Any]) -> None:
    dim = heads(cfg)[2]
    writer.add_rope_dimension_count(int(dim * float(cfg.get("partial_rotary_factor") or 1.0)))
    writer.add_rope_scaling_orig_ctx_len(original_context(cfg))


ARCHITECTURES: dict[str, GgufArch] = {
    "llama": GgufArch("llama", _LLAMA_LAYER, permute_qk=True, checks=(rope_types("llama3", "linear", "yarn"),)),
    "mistral": GgufArch("llama", _LLAMA_LAYER, permute_qk=True, checks=(scaled_rope, no_sliding_window)),
    "qwen2": GgufArch("qwen2", _LLAMA_LAYER, checks=(scaled_rope, no_sliding_window)),
    "qwen3": GgufArch("qwen3", {**_LLAMA_LAYER, **_QK_NORM}, checks=(scaled_rope, no_sliding_window)),
    "gemma2": GgufArch("gemma2", _GEMMA_LAYER, norm_plus_one=True, extra=_gemma2_meta,
                       checks=(plain_rope, gemma_query_scale, layer_pattern(2))),
    "gemma3_text": GgufArch("gemma3", {**_GEMMA_LAYER, **_QK_NORM}, norm_plus_one=True, extra=_gemma3_meta,
                            checks=(plain_rope, gemma_query_scale, layer_pattern(6), gemma3_local_rope, no_softcap)),
    "phi3": GgufArch("phi3", _PHI3_LAYER, extra=_phi3_meta, checks=(rope_types("longrope"), no_sliding_window)),
    "gpt2": GgufArch("gpt2", _GPT2_LAYER, top=dict(_GPT2_TOP), layer_prefix="transformer.h.", conv1d=True),
}


def architecture(cfg: dict[str, Any]) -> GgufArch:
    """The GGUF layout of a Hugging Face config, after its checks; a clear refusal otherwise."""
    kind = cfg.get("model_type")
    arch = ARCHITECTURES.get(str(kind))
    if arch is None:
        raise UsageError(f"GGUF export does not support the {kind} architecture yet",
                         f"llmkit writes GGUF for: {', '.join(sorted(ARCHITECTURES))}",
                         "export --format hf instead (transformers, vLLM), or convert it with llama.cpp's "
                         "convert_hf_to_gguf.py")
    arch.check(cfg)
    return arch


def write_metadata(writer: Any, arch: GgufArch, cfg: dict[str, Any]) -> None:
    """The hyperparameters llama.cpp's loader reads for ``arch``."""
    n, kv, dim = heads(cfg)
    hidden = int(cfg.get("hidden_size") or cfg["n_embd"])
    writer.add_context_length(int(cfg.get("max_position_embeddings") or cfg["n_positions"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(cfg.get("num_hidden_layers") or cfg["n_layer"]))
    writer.add_feed_forward_length(int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden))
    writer.add_head_count(n)
    writer.add_head_count_kv(kv)
    if arch.conv1d:
        writer.add_layer_norm_eps(float(cfg.get("layer_norm_epsilon", 1e-5)))
    else:
        writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
        writer.add_rope_freq_base(rope_theta(cfg))
    if arch.gguf == "llama":
        writer.add_rope_dimension_count(dim)
    if dim * n != hidden or arch.gguf in ("qwen3", "gemma2", "gemma3"):
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    if not arch.conv1d:
        rope_scaling_metadata(writer, cfg)
    if arch.extra is not None:
        arch.extra(writer, cfg)


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (halves) -> llama.cpp (interleaved) row order of a q/k projection (out, in) or bias."""
    out = w.shape[0]
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_rotary`."""
    out = w.shape[0]
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(arch: GgufArch, cfg: dict[str, Any], weights: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp name, fp32 array) for every tensor of the model, changed as ``arch`` needs."""
    n, kv, _ = heads(cfg)
    names: dict[str, str] = {}
    tied = bool(cfg.get("tie_word_embeddings", True))
    for hf_name in sorted(weights):
        if tied and hf_name == "lm_head.weight":
            continue  # the embedding, saved twice by some writers; llama.cpp reuses token_embd
        name = arch.gguf_name(hf_name)
        if name is not None:
            names[hf_name] = name
    if "output.weight" not in names.values() and arch.gguf == "gpt2":
        names["transformer.wte.weight#output"] = "output.weight"  # llama.cpp's gpt2 reads its own output matrix
    for hf_name, name in names.items():
        w = weights[hf_name.split("#")[0]]
        if arch.permute_qk and ".attn_q." in name:
            w = permute_rotary(w, n)
        elif arch.permute_qk and ".attn_k." in name:
            w = permute_rotary(w, kv)
        if arch.norm_plus_one and "norm.weight" in name:
            w = w + 1.0
        if arch.conv1d and w.ndim == 2 and name.startswith("blk."):
            w = np.ascontiguousarray(w.T)
        yield name, w
    if not arch.conv1d:
        yield from rope_tensors(cfg).items()
