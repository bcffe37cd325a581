"""Models: a Hugging Face architecture built from the config, or loaded from a local directory.

Built models use the HF classes (`LlamaForCausalLM`, `GPT2LMHeadModel`, and their
`...ForSequenceClassification` heads), so `final/` is a standard HF directory. Loading never
runs a model directory's own code unless ``model.trust_remote_code`` is set, and never unpickles:
weights load from safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmkit.config.schema import ModelConfig
from llmkit.errors import ConfigError, UsageError
from llmkit.config.derived import intermediate_size

_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


def hf_config(model: ModelConfig, vocab_size: int, eos_id: int, pad_id: int | None,
              num_labels: int | None = None, id2label: dict[int, str] | None = None) -> Any:
    """The transformers config for ``model`` (HF field names throughout)."""
    from transformers import GPT2Config, LlamaConfig

    common: dict[str, Any] = {"vocab_size": vocab_size, "eos_token_id": eos_id, "bos_token_id": eos_id,
                              "pad_token_id": pad_id, "tie_word_embeddings": model.tie_word_embeddings}
    if num_labels is not None:
        common["num_labels"] = num_labels
        if id2label:
            common["id2label"] = id2label
            common["label2id"] = {v: k for k, v in id2label.items()}
    if model.architecture == "gpt2":
        return GPT2Config(
            n_embd=model.hidden_size, n_layer=model.num_hidden_layers, n_head=model.num_attention_heads,
            n_positions=model.max_position_embeddings, n_inner=intermediate_size(model),
            resid_pdrop=model.dropout, embd_pdrop=model.dropout, attn_pdrop=model.dropout, **common,
        )
    return LlamaConfig(
        hidden_size=model.hidden_size, num_hidden_layers=model.num_hidden_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_key_value_heads or model.num_attention_heads,
        intermediate_size=intermediate_size(model), max_position_embeddings=model.max_position_embeddings,
        rope_theta=model.rope_theta, attention_dropout=model.dropout, rms_norm_eps=1e-5, **common,
    )


def _model_class(architecture: str, task: str) -> Any:
    from transformers import (GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaForCausalLM,
                              LlamaForSequenceClassification)

    table = {("gpt2", "lm"): GPT2LMHeadModel, ("gpt2", "classify"): GPT2ForSequenceClassification,
             ("llama", "lm"): LlamaForCausalLM, ("llama", "classify"): LlamaForSequenceClassification}
    return table[(architecture, task)]


def build_model(model: ModelConfig, vocab_size: int, eos_id: int, pad_id: int | None, seed: int,
                num_labels: int | None = None, id2label: dict[int, str] | None = None) -> Any:
    """A freshly initialised model, the same for the same seed (fp32, on the CPU)."""
    import torch

    task = "classify" if num_labels is not None else "lm"
    cfg = hf_config(model, vocab_size, eos_id, pad_id, num_labels, id2label)
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _model_class(model.architecture, task)(cfg)
    return net


def check_model_dir(path: Path, trust_remote_code: bool, allow_pickle: bool = False) -> dict[str, Any]:
    """Refuse model directories that would run code or (unless ``allow_pickle``) unpickle; return
    their config.json."""
    if not path.is_dir():
        raise UsageError(f"model directory {path} does not exist", "",
                         "set model.from_pretrained to a local Hugging Face model directory")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
        raise UsageError(f"{path} is not a Hugging Face model directory (no config.json)",
                         f"found: {found}", "point model.from_pretrained at a directory with config.json")
    try:
        hf = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{cfg_file} is not valid JSON", "", "restore the file") from None
    if "auto_map" in hf and not trust_remote_code:
        raise ConfigError(f"the model in {path} needs its own Python code (auto_map)",
                          "running code from a model directory is off by default",
                          "set model.trust_remote_code: true if you trust its author")
    if not any(path.glob("*.safetensors")):
        pickles = [n for n in _PICKLE_WEIGHTS if (path / n).exists()] + sorted(p.name for p in path.glob("pytorch_model-*.bin"))
        if allow_pickle and pickles:
            return hf
        raise UsageError(f"{path} has no safetensors weights",
                         f"found pickle files ({', '.join(pickles) or 'no weights at all'}); unpickling "
                         "can run arbitrary code, so llmkit does not load them",
                         "convert the weights to safetensors with a trusted tool, or set model.allow_pickle_weights: "
                         "true to load them with torch.load(weights_only=True)")
    return hf


def load_model(path: str | Path, trust_remote_code: bool, num_labels: int | None = None,
               id2label: dict[int, str] | None = None, allow_pickle: bool = False, base_bits: int = 32,
               device: Any = "cpu") -> Any:
    """A causal LM (or classifier, with ``num_labels``) from a local HF directory, fp32; with
    ``base_bits`` 16/8/4, a frozen LoRA base in bf16 or quantized on ``device``
    (``llmkit.model.quantize``)."""
    from transformers.utils import logging as hf_logging

    from llmkit.privacy import crypto

    hf_logging.disable_progress_bar()
    if Path(path).is_dir() and crypto.has_sealed(path):  # an encrypted run's model: decrypted in memory
        with crypto.readable_dir(path) as plain:
            return _load_model(plain, trust_remote_code, num_labels, id2label, allow_pickle, base_bits, device)
    return _load_model(Path(path), trust_remote_code, num_labels, id2label, allow_pickle, base_bits, device)


def _load_model(p: Path, trust_remote_code: bool, num_labels: int | None, id2label: dict[int, str] | None,
                allow_pickle: bool = False, base_bits: int = 32, device: Any = "cpu") -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from llmkit.model.quantize import base_load_options, settle

    check_model_dir(p, trust_remote_code, allow_pickle)
    safetensors = any(p.glob("*.safetensors"))
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "use_safetensors": safetensors,
                              "local_files_only": True, **base_load_options(base_bits, device)}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
        if id2label:
            kwargs["id2label"], kwargs["label2id"] = id2label, {v: k for k, v in id2label.items()}
        return settle(AutoModelForSequenceClassification.from_pretrained(str(p), **kwargs))
    return settle(AutoModelForCausalLM.from_pretrained(str(p), **kwargs))


def matmul_weights(model: Any) -> tuple[int, int]:
    """(weights multiplied per token, the trainable share of them) of a torch model: every matrix
    except the embedding lookups, plus the LM head even when it is tied to the input embedding
    (the "N" of ``llmkit.planning.compute.flops_per_token``)."""
    import torch

    from llmkit.model.quantize import logical_numel, logical_shape

    lookups = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    total = trainable = 0
    for p in model.parameters():
        if len(logical_shape(p)) == 2 and id(p) not in lookups:
            total += logical_numel(p)
            trainable += logical_numel(p) if p.requires_grad else 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head.weight) in lookups:  # tied: one parameter, two uses
        total += head.weight.numel()
        trainable += head.weight.numel() if head.weight.requires_grad else 0
    return total, trainable
