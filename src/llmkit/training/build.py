"""The model the loop trains: built or loaded, LoRA-wrapped, checkpointed, on its device."""

from __future__ import annotations

from typing import Any

from llmkit.config.schema import RunConfig
from llmkit.errors import ConfigError, UsageError
from llmkit.model.build import build_model, load_model
from llmkit.model.lora import apply_lora
from llmkit.model.quantize import is_quantized
from llmkit.objectives import for_task


def build_for_training(cfg: RunConfig, data: Any, device: Any, log: Any) -> Any:
    """Model for ``cfg`` sized to the prepared data's vocabulary (and labels)."""
    m = cfg.model
    vocab = m.vocab_size or data.vocab_size
    if vocab < data.vocab_size:
        raise ConfigError(f"model.vocab_size {vocab} is smaller than the tokenizer's {data.vocab_size} tokens",
                          "token ids would index past the embedding table", "set model.vocab_size: null")
    classifier = for_task(cfg.train.task).head == "sequence_classification"
    num_labels = data.num_labels if classifier else None
    if m.num_labels is not None and num_labels is not None and m.num_labels != num_labels:
        raise ConfigError(f"model.num_labels is {m.num_labels} but the data has {num_labels} labels", "",
                          "set model.num_labels: null to take them from the data")
    if m.from_pretrained:
        from llmkit.hub import resolve

        import torch

        source = resolve(m.from_pretrained, "model", cfg.hub_token_env, m.allow_pickle_weights, log)
        torch.manual_seed(cfg.train.seed)  # a new head (a classifier's): the same in every run and process
        bits = m.lora.base_bits if m.lora.enabled else 32
        model = load_model(source.path, m.trust_remote_code, num_labels, data.id2label, m.allow_pickle_weights,
                           bits, device)
        positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        if positions is not None and cfg.train.sequence_length_tokens > positions:
            raise ConfigError(f"train.sequence_length_tokens {cfg.train.sequence_length_tokens} exceeds the "
                              f"model's {positions} positions", f"model: {m.from_pretrained}",
                              f"set train.sequence_length_tokens to {positions} or less")
        if model.get_input_embeddings().num_embeddings < data.vocab_size:
            raise UsageError("the tokenizer has more tokens than the model's embedding table",
                             f"tokenizer {data.vocab_size}, model {model.get_input_embeddings().num_embeddings}",
                             "use the model's own tokenizer (tokenizer.kind: pretrained, path: the model dir)")
        log(f"loaded {m.from_pretrained}")
    else:
        model = build_model(m, vocab, data.eos_id, data.pad_id, cfg.train.seed, num_labels, data.id2label)
    if data.pad_id is not None:
        model.config.pad_token_id = data.pad_id
    model.config.use_cache = False
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if m.lora.enabled:
        import torch

        torch.manual_seed(cfg.train.seed)  # the adapters' init: the same in every process and every run
        model = apply_lora(model, m.lora, classifier)
    if is_quantized(model):
        return model  # placed on the device as it loaded (bitsandbytes' weights do not move with .to)
    return model.to(device)
