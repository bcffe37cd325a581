"""`llmkit export --format gguf`: a llama.cpp GGUF file, written with the `gguf` package.

Supported: the llama architecture, Llama and Mistral (f32, f16, q8_0). Tensors take llama.cpp's names; the query
and key projections are permuted from Hugging Face's rotary layout (halves) to llama.cpp's
(interleaved pairs), as llama.cpp's own converter does. The byte-level BPE tokenizer goes in as
``tokenizer.ggml.model = gpt2`` (vocabulary, merges, token types, special ids) with the
pre-tokenizer it really uses (``pre_tokenizer``), the chat template and the end-of-turn token;
an Ollama Modelfile is written beside the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.data.tokenizer import CHAT_TEMPLATE, PLAIN_CHAT_TEMPLATE, TOOLS_FOOTER, TOOLS_HEADER, end_token_ids
from llmkit.errors import UsageError
from llmkit.exporting.base import ExportFormat, Exported, ExportRequest
from llmkit.fsutil import atomic_write_text
from llmkit.optional import require

SUPPORTED = ("llama", "mistral")  # Mistral is llama.cpp's llama architecture (without a sliding window)
QUANTS = ("f32", "f16", "q8_0")


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (halves) -> llama.cpp (interleaved) row order of a q/k projection (out, in)."""
    out = w.shape[0]
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_rotary`."""
    out = w.shape[0]
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_names(layers: int, tied: bool) -> dict[str, str]:
    """Hugging Face llama parameter name -> GGUF tensor name."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not tied:
        names["lm_head.weight"] = "output.weight"
    per = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(layers):
        for hf, gg in per.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    return names


# Llama 3's pre-tokenizer split (tokenizer.json of Llama-3-style tokenizers), llama.cpp's "llama-bpe".
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def pre_tokenizer(data: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer ``tokenizer.json`` really uses: ``gpt-2`` for byte-level
    BPE with GPT-2's split (llmkit's own tokenizers), ``llama-bpe`` for Llama 3's split. Anything
    else has no llama.cpp name llmkit can vouch for: refused, since llama.cpp would split text
    differently from the tokenizer the model was trained with."""
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (len(parts) == 2 and parts[0].get("type") == "Split" and parts[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT
            and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)):
        return "llama-bpe"
    raise UsageError("GGUF export: llama.cpp has no pre-tokenizer known to match this tokenizer's",
                     f"its pre_tokenizer is {json.dumps(pre)[:300]}",
                     "export --format hf (transformers and vLLM use tokenizer.json as it is)")


def _tokenizer_fields(model_dir: Path) -> dict[str, Any]:
    data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise UsageError("GGUF export supports byte-level BPE tokenizers", f"found {model.get('type')}",
                         "train the tokenizer with llmkit (tokenizer.kind: bpe)")
    vocab: dict[str, int] = dict(model["vocab"])
    special = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    vocab.update(special)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for tok, i in vocab.items():
        tokens[i] = tok
    types = [4 if tokens[i] in special else 1 for i in range(size)]  # 4: control, 1: normal
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "special": special, "pre": pre_tokenizer(data)}


def export_gguf(model_dir: Path, out_file: Path, quant: str = "f32", overwrite: bool = False) -> Path:
    """Write ``model_dir`` (an HF llama directory) as one GGUF file."""
    cfg = json.loads((model_dir / "config.json").read_text())
    arch = cfg.get("model_type")
    if arch not in SUPPORTED:
        raise UsageError(f"GGUF export does not support the {arch} architecture yet",
                         f"llmkit writes GGUF for: {', '.join(SUPPORTED)}",
                         "export --format hf instead (transformers, vLLM), or convert it with llama.cpp's "
                         "convert_hf_to_gguf.py")
    window = cfg.get("sliding_window")
    if arch == "mistral" and window and window < cfg["max_position_embeddings"]:
        raise UsageError(f"GGUF export: this Mistral attends over a sliding window of {window} tokens",
                         "llama.cpp's llama architecture attends over the whole context",
                         "export --format hf instead")
    if quant not in QUANTS:
        raise UsageError(f"unknown GGUF quantization {quant!r}", f"choose one of {', '.join(QUANTS)}", "pass --quant f32")
    if out_file.exists() and not overwrite:
        raise UsageError(f"{out_file} exists", "export never overwrites by default", "pass --overwrite")
    gguf = require("gguf", "export", "GGUF export")
    from safetensors.numpy import load_file

    weights: dict[str, np.ndarray] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update({k: v.astype(np.float32) for k, v in load_file(str(f)).items()})
    tied = bool(cfg.get("tie_word_embeddings", True)) or "lm_head.weight" not in weights
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    tok = _tokenizer_fields(model_dir)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(model_dir.parent.name if model_dir.name == "final" else model_dir.name)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_rope_dimension_count(cfg["hidden_size"] // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    rope = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(rope))
    writer.add_vocab_size(len(tok["tokens"]))
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    tcfg = json.loads((model_dir / "tokenizer_config.json").read_text()) if (model_dir / "tokenizer_config.json").exists() else {}
    eos = tok["special"].get(tcfg.get("eos_token") or "<|endoftext|>", cfg.get("eos_token_id", 0))
    writer.add_bos_token_id(int(cfg.get("bos_token_id", eos) or eos))
    writer.add_eos_token_id(int(eos))
    pad = tok["special"].get(tcfg.get("pad_token") or "")
    if pad is not None:
        writer.add_pad_token_id(int(pad))
    writer.add_add_bos_token(False)
    template = chat_template(model_dir)
    if template:
        writer.add_chat_template(template)
    ends = end_token_ids(model_dir, int(eos))
    if len(ends) > 1:  # the end-of-turn token: llama.cpp stops a chat reply there
        writer.add_eot_token_id(ends[1])
    for hf_name, gg_name in tensor_names(cfg["num_hidden_layers"], tied).items():
        w = weights[hf_name]
        if hf_name.endswith("q_proj.weight"):
            w = permute_rotary(w, heads)
        elif hf_name.endswith("k_proj.weight"):
            w = permute_rotary(w, kv)
        if quant == "f32" or w.ndim == 1:
            writer.add_tensor(gg_name, w.astype(np.float32))
        elif quant == "f16":
            writer.add_tensor(gg_name, w.astype(np.float16))
        else:
            q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gg_name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_file)
    atomic_write_text(modelfile_path(out_file), modelfile(out_file, template, [tok["tokens"][i] for i in ends],
                                                          cfg["max_position_embeddings"], _temperature(model_dir)))
    return out_file


def chat_template(model_dir: Path) -> str | None:
    """The chat template: chat_template.jinja, else tokenizer_config.json's."""
    if (model_dir / "chat_template.jinja").exists():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if (model_dir / "tokenizer_config.json").exists():
        return json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    return None


def _temperature(model_dir: Path) -> float | None:
    path = model_dir / "generation_config.json"
    return json.loads(path.read_text()).get("temperature") if path.exists() else None


def modelfile_path(gguf_file: Path) -> Path:
    return gguf_file.with_name(gguf_file.stem + ".Modelfile")


# llmkit's chat template (ChatML) in Ollama's Go template language.
OLLAMA_CHATML = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
                 '<|im_start|>assistant\n')
# The same with its tool-call convention (data.tokenizer.CHAT_TEMPLATE): Ollama gathers the system
# messages into .System; with .Tools they open the tools' system turn, as the Jinja template does.
OLLAMA_CHATML_TOOLS = (
    '{{- if .Tools }}<|im_start|>system\n{{ if .System }}{{ .System }}\n\n{{ end }}' + TOOLS_HEADER
    + '{{ range .Tools }}\n{{ json . }}{{ end }}' + TOOLS_FOOTER + '<|im_end|>\n{{ end }}'
    '{{- range .Messages }}'
    '{{- if and (eq .Role "system") $.Tools }}'
    '{{- else if and (eq .Role "assistant") .ToolCalls }}<|im_start|>assistant\n{{ if .Content }}{{ .Content }}\n{{ end }}'
    '{{- range $i, $c := .ToolCalls }}{{ if $i }}\n{{ end }}<tool_call>\n'
    '{"name": "{{ $c.Function.Name }}", "arguments": {{ json $c.Function.Arguments }}}\n</tool_call>{{ end }}<|im_end|>\n'
    '{{ else if eq .Role "tool" }}<|im_start|>tool\n<tool_response>\n{{ .Content }}\n</tool_response><|im_end|>\n'
    '{{ else }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
    '{{- end }}<|im_start|>assistant\n')


def modelfile(gguf_file: Path, template: str | None, stops: list[str], context: int,
              temperature: float | None) -> str:
    """An Ollama Modelfile for the GGUF beside it: `ollama create NAME -f <this file>`."""
    lines = [f"# Ollama: ollama create {gguf_file.stem} -f {modelfile_path(gguf_file).name}", f"FROM ./{gguf_file.name}"]
    if template is not None and template.strip() == CHAT_TEMPLATE:
        lines.append(f'TEMPLATE """{OLLAMA_CHATML_TOOLS}"""')
    elif template is not None and template.strip() == PLAIN_CHAT_TEMPLATE:
        lines.append(f'TEMPLATE """{OLLAMA_CHATML}"""')
    elif template:
        lines.append("# a custom chat template: Ollama reads it from the GGUF (tokenizer.chat_template)")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines.append(f"PARAMETER num_ctx {context}")
    if temperature is not None:
        lines.append(f"PARAMETER temperature {temperature}")
    return "\n".join(lines) + "\n"


class GgufFormat(ExportFormat):
    """One llama.cpp GGUF file (and an Ollama Modelfile beside it); `llmkit verify --gguf` runs it
    in llama.cpp."""

    name = "gguf"

    def export(self, request: ExportRequest) -> Exported:
        path = export_gguf(request.src, request.out, request.quant, request.overwrite)
        return Exported(path, "gguf", [path.name], {"bytes": path.stat().st_size, "quant": request.quant})


FORMAT = GgufFormat()
