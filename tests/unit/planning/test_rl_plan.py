"""The plan of an RL run: the answers decoded together (their KV cache), sampling's compute, the KL
reference."""

from __future__ import annotations

from llmkit.config.load import validate_config
from llmkit.config.presets import load_preset
from llmkit.planning.compute import preference_factor
from llmkit.planning.memory import kv_cache_bytes, reference_kind, rollout_rows, training_memory
from llmkit.planning.params import count_parameters


def cfg(lora: bool = False, **rl):  # type: ignore[no-untyped-def]
    data = load_preset("llama-1b")
    rl = {"rewards": [{"function": "contains"}], "group_size": 8, **rl}
    data["train"] = {**data["train"], "task": "rl", "rl": rl, "precision": "bf16", "global_batch_size": 64,
                     "micro_batch_size": 8}
    data["model"] = {**data["model"], "lora": {"enabled": lora}, "from_pretrained": "org/base" if lora else None}
    return validate_config(data)


def test_rollouts_kv_cache_and_reference() -> None:
    plain = cfg()
    assert reference_kind(plain) == "none" and reference_kind(cfg(kl_beta=0.04)) == "copy"
    assert reference_kind(cfg(lora=True, kl_beta=0.04)) == "adapters_off"
    assert rollout_rows(plain) == 64 and rollout_rows(cfg(steps_per_generation=4)) == 256
    assert rollout_rows(plain, num_devices=2) == 32
    mem = training_memory(plain, 8, "bf16")
    seq = plain.train.sequence_length_tokens
    assert mem.rollout_bytes >= 64 * kv_cache_bytes(plain, seq, 2)
    # the peak counts the rollouts or the training pass's activations and logits, whichever is larger
    others = mem.peak_bytes - max(mem.activations_bytes + mem.logits_bytes, mem.rollout_bytes)
    assert others == (mem.weights_bytes + mem.autocast_copies_bytes + mem.gradients_bytes + mem.optimizer_bytes
                      + mem.overhead_bytes + mem.reference_bytes)
    assert sum(mem.parts().values()) == mem.peak_bytes
    bigger = training_memory(cfg(steps_per_generation=16), 8, "bf16")  # 1,024 answers together
    assert bigger.rollout_bytes > mem.rollout_bytes and bigger.peak_bytes > mem.peak_bytes
    weights = count_parameters(plain.model, 128256).total
    assert training_memory(cfg(kl_beta=0.04), 8, "bf16").reference_bytes > 4 * weights


def test_compute_counts_sampling_and_the_reference() -> None:
    assert abs(preference_factor(cfg()) - 4 / 3) < 1e-9  # training + one sampling forward a step
    assert abs(preference_factor(cfg(kl_beta=0.1)) - 5 / 3) < 1e-9
    assert abs(preference_factor(cfg(steps_per_generation=2)) - (1 + (2 / 3) / 2)) < 1e-9
