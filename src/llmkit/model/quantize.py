"""Frozen LoRA bases below fp32: bf16, LLM.int8 and NF4 (bitsandbytes), and their way back to fp32.

``model.lora.base_bits`` 16 loads the whole base in bf16 (fp16 on a GPU without bf16); 8 and 4
load it through transformers' bitsandbytes integration: every linear projection of the blocks
quantized (int8 with outlier columns; NF4 with double quantization, computing in bf16), the
embeddings, norms and output head in bf16 (as QLoRA keeps them: for an 8 B Llama that is 2 GB
instead of 4). The adapters peft adds on top stay fp32.

A quantized base never leaves the run: ``final/`` is the adapters merged into the base
*dequantized* (the weights the adapters were trained against, in fp32), not into re-rounded
4-bit weights and not into the original fp32 checkpoint the quantization came from.
"""

from __future__ import annotations

from typing import Any

from llmkit.errors import ConfigError
from llmkit.optional import require

QUANTIZED_BITS = (4, 8)


def half_dtype(device: Any) -> Any:
    """bf16 where the device runs it, else fp16 (older GPUs)."""
    import torch

    if getattr(device, "type", device) == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def base_load_options(bits: int, device: Any) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load a frozen base at ``bits``."""
    import torch

    if bits == 32:
        return {"dtype": torch.float32}
    if bits == 16:
        return {"dtype": half_dtype(device)}
    kind = getattr(device, "type", device)
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"model.lora.base_bits: {bits} is not available on {kind}",
                          "bitsandbytes quantizes on CUDA GPUs and on CPUs", "set model.lora.base_bits: 16 or 32")
    require("bitsandbytes", "qlora", f"model.lora.base_bits: {bits}", "or set model.lora.base_bits: 16")
    from transformers import BitsAndBytesConfig

    if bits == 8:
        quant = BitsAndBytesConfig(load_in_8bit=True)
    else:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=half_dtype(device))
    where = {"": torch.cuda.current_device()} if kind == "cuda" else {"": "cpu"}
    return {"dtype": half_dtype(device), "quantization_config": quant, "device_map": where}


def settle(model: Any) -> Any:
    """One arithmetic for a 4-bit base in training and evaluation, on every CPU: bitsandbytes
    repacks NF4 weights for its AVX512-BF16 inference kernel the first time a layer runs in eval
    mode on such a CPU, and a repacked layer then takes that kernel in training too, which passes
    no gradient to its input. Turned off here, every CPU takes the dequantize-and-matmul path
    (the one GPUs take)."""
    for module in model.modules():
        if _kind(module) == "nf4":
            module.support_avx512bf16_for_cpu = False
    return model


def logical_numel(param: Any) -> int:
    """Elements a parameter stands for: a packed 4-bit weight's unpacked shape, else its own."""
    import math

    state = getattr(param, "quant_state", None)
    return math.prod(state.shape) if state is not None else param.numel()


def logical_shape(param: Any) -> tuple[int, ...]:
    """A parameter's shape as its layer uses it (a packed 4-bit weight: the unpacked matrix)."""
    state = getattr(param, "quant_state", None)
    return tuple(state.shape) if state is not None else tuple(param.shape)


def weight_bytes(model: Any) -> int:
    """Bytes a model's weights hold in memory: parameters and buffers, and each quantized
    weight's quantization constants (NF4: block absmax, double-quantized; int8: row scales)."""
    total = 0
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
        state = getattr(t, "quant_state", None)
        if state is not None:
            for extra in (state.absmax, getattr(state, "code", None), *(
                    (state.state2.absmax, state.state2.code) if getattr(state, "state2", None) is not None else ())):
                if extra is not None:
                    total += extra.numel() * extra.element_size()
        scale = getattr(t, "SCB", None)
        if scale is not None:
            total += scale.numel() * scale.element_size()
    for module in model.modules():  # LLM.int8 keeps its row scales on the layer's state after a forward
        state = getattr(module, "state", None)
        scb = getattr(state, "SCB", None) if _kind(module) == "int8" else None
        if scb is not None and getattr(module.weight, "SCB", None) is None:
            total += scb.numel() * scb.element_size()
    return total


def is_quantized(model: Any) -> bool:
    """Whether any weight of ``model`` is a bitsandbytes quantized tensor."""
    return any(_kind(m) is not None for m in model.modules())


def _kind(module: Any) -> str | None:
    name = type(module).__name__
    if name == "Linear4bit" and type(module).__module__.startswith("bitsandbytes"):
        return "nf4"
    if name == "Linear8bitLt" and type(module).__module__.startswith("bitsandbytes"):
        return "int8"
    return None


def dequantized_weight(module: Any) -> Any:
    """The fp32 weight a bitsandbytes layer computes with (what its adapters were trained against)."""
    import torch

    kind = _kind(module)
    w = module.weight
    if kind == "nf4":
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(w.data, w.quant_state).float()
    if kind == "int8":
        scale = w.SCB if getattr(w, "SCB", None) is not None else module.state.SCB
        return (w.data.float() * scale.float().unsqueeze(1) / 127.0).to(torch.float32)
    return w.detach().float()


def linear_module_names(model: Any) -> list[str]:
    """The last name of every linear projection inside the model's blocks (attention and MLP,
    fused ones such as Phi-3's ``qkv_proj`` included), found in the model itself: every
    ``torch.nn.Linear`` (bitsandbytes' layers are subclasses) or GPT-2 ``Conv1D`` except the
    output head and a classifier head."""
    import torch

    heads = set()
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        heads.add(id(out))
    for name in ("score", "classifier"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            heads.add(id(getattr(model, name)))
    names: list[str] = []
    for full, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        leaf = full.rsplit(".", 1)[-1]
        if is_linear and id(module) not in heads and leaf not in names and full:
            names.append(leaf)
    return names


def merged_fp32(model: Any, base_config: Any, classify: bool) -> Any:
    """A plain fp32 model equal to ``model`` (a peft model on a bf16 or quantized base) with its
    adapters merged: the base's weights dequantized (or cast) to fp32, then peft's own merge."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    peft = require("peft", "lora", "LoRA (model.lora.enabled)")
    config = base_config.__class__.from_dict(base_config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    cls = AutoModelForSequenceClassification if classify else AutoModelForCausalLM
    try:  # every weight is overwritten below: skip the random initialisation (minutes for 8 B)
        from transformers.initialization import no_init_weights
    except ImportError:
        from contextlib import nullcontext as no_init_weights  # type: ignore[assignment]
    with no_init_weights():
        plain = cls.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(base_weights(model.get_base_model()), strict=False)
    if result.missing_keys:
        raise RuntimeError(f"merging the adapters: no base weight for {result.missing_keys[:3]}")
    plain.tie_weights()
    wrapped = peft.PeftModel(plain, model.peft_config["default"])
    adapters = peft.get_peft_model_state_dict(model)
    peft.set_peft_model_state_dict(wrapped, {k: v.float() for k, v in adapters.items()})
    return wrapped.merge_and_unload()


def base_weights(inner: Any) -> dict[str, Any]:
    """The frozen base of a peft-wrapped model as a plain fp32 state dict (names as the model
    without adapters has them; quantized layers dequantized)."""
    state: dict[str, Any] = {}
    for name, module in inner.named_modules():
        if "lora_" in name or "modules_to_save" in name:
            continue
        plain = _base_name(name)
        prefix = plain + "." if plain else ""
        if _kind(module) is not None:
            state[prefix + "weight"] = dequantized_weight(module)
            if module.bias is not None:
                state[prefix + "bias"] = module.bias.detach().float()
            continue
        for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if key in getattr(module, "_non_persistent_buffers_set", ()):
                continue
            state[prefix + key] = tensor.detach().float() if tensor.is_floating_point() else tensor.detach()
    return state


def _base_name(name: str) -> str:
    """A peft-wrapped module's name as the plain model names it."""
    return name.replace(".base_layer", "").replace(".original_module", "")
