"""`llmkit export --format gguf`: a llama.cpp GGUF file, written with the `gguf` package.

Architectures: Llama, Mistral, Qwen 2/2.5, Qwen 3, Gemma 2, Gemma 3, Phi-3 and llmkit's gpt2-style
presets (`exporting.gguf_arch` has each one's tensor names, metadata and weight changes).
Quantization: f32, f16, bf16 and q8_0 written here; q6_k, q5_k_m, q4_k_m and q4_0 made from the f32
file by llama.cpp's own quantizer. The tokenizer goes in as llama.cpp's ``gpt2`` (byte-level BPE)
or ``llama`` (SentencePiece-style) vocabulary (``exporting.gguf_vocab``), with the chat template and
the end-of-turn token; an Ollama Modelfile is written beside the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.data.tokenizer import CHAT_TEMPLATE, PLAIN_CHAT_TEMPLATE, TOOLS_FOOTER, TOOLS_HEADER
from llmkit.errors import UsageError
from llmkit.exporting.base import ExportFormat, Exported, ExportRequest
from llmkit.exporting.gguf_vocab import Vocab, read_vocab, write_vocab
from llmkit.exporting.gguf_arch import ARCHITECTURES, architecture, gguf_tensors, permute_rotary, unpermute_rotary, write_metadata
from llmkit.fsutil import atomic_write_text
from llmkit.optional import require

# Quantization types: written by llmkit itself (the first four), or from an f32 file by llama.cpp's own
# quantizer (llama-cpp-python's binding of llama_model_quantize, the `llamacpp` extra).
QUANTS = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")
BY_LLAMA_CPP = {"q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
                "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}


def tensor_names(layers: int, tied: bool) -> dict[str, str]:
    """Hugging Face llama parameter name -> GGUF tensor name."""
    arch = ARCHITECTURES["llama"]
    names = [f"model.{n}.weight" for n in ("embed_tokens", "norm")] + ([] if tied else ["lm_head.weight"])
    names += [f"model.layers.{i}.{m}.weight" for i in range(layers) for m in arch.layer]
    return {n: str(arch.gguf_name(n)) for n in names}


def export_gguf(model_dir: Path, out_file: Path, quant: str = "f32", overwrite: bool = False) -> Path:
    """Write ``model_dir`` (a Hugging Face model directory) as one GGUF file of type ``quant``, and an
    Ollama Modelfile beside it."""
    cfg = json.loads((model_dir / "config.json").read_text())
    arch = architecture(cfg)
    if quant not in QUANTS:
        raise UsageError(f"unknown GGUF quantization {quant!r}", f"choose one of {', '.join(QUANTS)}", "pass --quant f32")
    if out_file.exists() and not overwrite:
        raise UsageError(f"{out_file} exists", "export never overwrites by default", "pass --overwrite")
    if quant in BY_LLAMA_CPP:
        require("llama_cpp", "llamacpp", f"GGUF {quant} (llama.cpp's quantizer)")
    gguf = require("gguf", "export", "GGUF export")
    out_file.parent.mkdir(parents=True, exist_ok=True)  # as --format hf makes its folder
    tok = read_vocab(model_dir, int(cfg.get("vocab_size") or 0))
    template = chat_template(model_dir)
    if quant in BY_LLAMA_CPP:  # an f32 file beside the target, quantized into it; the target is replaced only at the end
        f32 = out_file.with_name(f".{out_file.name}.f32")
        try:
            ends = _write(gguf, model_dir, cfg, arch, tok, template, "f32", f32)
            quantize_with_llama_cpp(f32, out_file, quant)
        finally:
            f32.unlink(missing_ok=True)
    else:
        ends = _write(gguf, model_dir, cfg, arch, tok, template, quant, out_file)
    context = int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048)
    atomic_write_text(modelfile_path(out_file), modelfile(out_file, template, [tok.tokens[i] for i in ends],
                                                          context, _temperature(model_dir)))
    return out_file


def _write(gguf: Any, model_dir: Path, cfg: dict[str, Any], arch: Any, tok: Vocab, template: str | None,
           quant: str, out_file: Path) -> list[int]:
    """Write the GGUF (atomically); return the end-token ids it declares."""
    from safetensors.numpy import load_file

    weights: dict[str, np.ndarray] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update({k: v.astype(np.float32) for k, v in load_file(str(f)).items()})
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch.gguf)
    writer.add_name(model_dir.parent.name if model_dir.name == "final" else model_dir.name)
    write_metadata(writer, arch, cfg)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    writer.add_file_type(file_type)
    ends = write_vocab(writer, model_dir, cfg, tok, template)
    for name, w in gguf_tensors(arch, cfg, weights):
        _add_tensor(gguf, writer, name, w, quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_file)
    return ends


def _add_tensor(gguf: Any, writer: Any, name: str, w: np.ndarray, quant: str) -> None:
    """One tensor at ``quant``; vectors (norms, biases) and rows a block does not divide stay wider."""
    if quant == "f32" or w.ndim == 1:
        writer.add_tensor(name, w.astype(np.float32))
    elif quant == "f16" or (quant == "q8_0" and w.shape[-1] % 32):
        writer.add_tensor(name, w.astype(np.float16))
    else:
        qtype = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]
        q = gguf.quants.quantize(w, qtype)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)


def quantize_with_llama_cpp(src: Path, out_file: Path, quant: str) -> None:
    """``src`` (an f32 GGUF) -> ``out_file`` at ``quant``, by llama.cpp's ``llama_model_quantize``.
    Rows that a k-quant's 256-wide block does not divide get llama.cpp's own fallback type."""
    import ctypes
    import os

    llama_cpp = require("llama_cpp", "llamacpp", f"GGUF {quant} (llama.cpp's quantizer)")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, BY_LLAMA_CPP[quant])
    params.nthread = os.cpu_count() or 1
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if code != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise UsageError(f"llama.cpp could not quantize the model to {quant} (code {code})",
                         "its log above says which tensor or key it refused",
                         "export --quant f16 or q8_0 (written by llmkit), and report the log")
    tmp.replace(out_file)


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
