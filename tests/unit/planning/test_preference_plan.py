"""The plan of a preference run: two sequences a pair, the reference's memory and forward pass."""

from __future__ import annotations

from llmkit.config.load import validate_config
from llmkit.config.presets import load_preset
from llmkit.planning.compute import Rates, step_seconds
from llmkit.planning.memory import reference_kind, training_memory
from llmkit.planning.params import count_parameters


def cfg(task: str = "preference", lora: bool = False, **preference):  # type: ignore[no-untyped-def]
    data = load_preset("llama-1b")
    data["train"] = {**data["train"], "task": task, "preference": preference, "precision": "bf16"}
    data["model"] = {**data["model"], "lora": {"enabled": lora}, "from_pretrained": "org/base" if lora else None}
    return validate_config(data)


def test_reference_kinds() -> None:
    assert reference_kind(cfg()) == "copy"
    assert reference_kind(cfg(lora=True)) == "adapters_off"
    assert reference_kind(cfg(precompute_reference=True)) == "precomputed"
    assert reference_kind(cfg(loss="simpo")) == "none" and reference_kind(cfg(loss="orpo")) == "none"
    assert reference_kind(cfg(task="sft")) == "none"


def test_memory_counts_both_answers_and_the_reference() -> None:
    pairs = 2
    sft = training_memory(cfg(task="sft"), 2 * pairs, "bf16")
    copy = training_memory(cfg(), pairs, "bf16")
    pre = training_memory(cfg(precompute_reference=True), pairs, "bf16")
    simpo = training_memory(cfg(loss="simpo"), pairs, "bf16")
    assert copy.activations_bytes == sft.activations_bytes  # a pair is two sequences
    assert copy.logits_bytes > sft.logits_bytes  # the backward's recomputed chunk
    weights = count_parameters(cfg().model, 128256).total
    assert copy.reference_bytes - pre.reference_bytes > 4 * weights  # the frozen fp32 copy and its logits
    assert pre.reference_bytes == simpo.reference_bytes == 0
    lora = training_memory(cfg(lora=True), pairs, "bf16")
    assert 0 < lora.reference_bytes == copy.reference_bytes - 4 * weights  # a forward's logits, no copy


def test_step_time_counts_the_reference_forward() -> None:
    rates = Rates(gemm=lambda g: 2e14, attention_seconds=lambda a: 1e-9 * a.__dict__.get("batch", 1),
                  cross_entropy_seconds=lambda tokens, vocab: 1e-13 * tokens * vocab, bandwidth_bytes_s=2e12)
    sft = step_seconds(cfg(task="sft"), 8, rates)
    pre = step_seconds(cfg(precompute_reference=True), 4, rates)
    copy = step_seconds(cfg(), 4, rates)
    assert abs(pre / sft - 1) < 0.05  # the same 8 sequences of training
    assert 1.2 < copy / pre < 1.4  # plus a forward pass
