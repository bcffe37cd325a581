"""Rules with one owner give one answer wherever they are asked (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.config.derived import lora_parameters, vocab_size
from llmkit.config.load import ConfigProblems, validate_config
from llmkit.config.schema import RunConfig
from llmkit.device import cpu_flags, cpu_has_fast_bf16
from llmkit.doctor.probes import cpu_verdict
from llmkit.planning.params import count_parameters, trainable_parameters

CPUINFO = {  # name: (/proc/cpuinfo text, the precision `auto` must pick)
    "x86 avx512_bf16": ("model name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n", "bf16"),
    "x86 amx": ("model name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n", "bf16"),
    "x86 avx2 only": ("model name\t: Intel Core\nflags\t\t: fpu sse avx2\n", "fp32"),
    "arm64 bf16": ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", "bf16"),
    "arm64 without": ("processor\t: 0\nFeatures\t: fp asimd\n", "fp32"),
}


@pytest.mark.parametrize("name", CPUINFO)
def test_doctor_and_train_make_the_same_bf16_decision(name: str) -> None:
    text, expected = CPUINFO[name]
    assert ("bf16" if cpu_has_fast_bf16(cpu_flags(text)) else "fp32") == expected
    assert cpu_verdict(text, 2, None).facts["precision"] == expected


def _cfg(arch: str, task: str = "pretrain", **lora: object) -> RunConfig:
    model: dict[str, object] = {"architecture": arch, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "max_position_embeddings": 64, "from_pretrained": "base",
                                "lora": {"enabled": True, "r": 4, **lora}}
    if arch == "llama":
        model["num_key_value_heads"] = 2
    if task == "classify":
        model["num_labels"] = 3
    return validate_config({"name": "t", "model": model, "tokenizer": {"vocab_size": 300},
                            "train": {"task": task, "sequence_length_tokens": 32}})


@pytest.mark.parametrize(("arch", "task", "targets", "dora"), [
    ("llama", "pretrain", None, False), ("llama", "pretrain", ["q_proj", "v_proj"], False),
    ("llama", "classify", None, False), ("llama", "pretrain", None, True),
    ("gpt2", "pretrain", None, False), ("gpt2", "pretrain", ["c_proj"], False), ("gpt2", "classify", None, False),
])
def test_lora_trainable_count_is_exact(arch: str, task: str, targets: list[str] | None, dora: bool) -> None:
    pytest.importorskip("peft")
    from llmkit.model.build import build_model
    from llmkit.model.lora import apply_lora

    cfg = _cfg(arch, task, target_modules=targets, dora=dora)
    labels = 3 if task == "classify" else None
    model = build_model(cfg.model, vocab_size(cfg), 0, 0, seed=0, num_labels=labels)
    model = apply_lora(model, cfg.model.lora, classify=task == "classify")
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable_parameters(cfg) == trained
    assert lora_parameters(cfg.model) <= trained


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_flops_weights_of_the_model_and_of_the_config_agree(arch: str) -> None:
    from llmkit.model.build import build_model, matmul_weights

    cfg = validate_config({"name": "t", "model": {"architecture": arch, "hidden_size": 64, "num_hidden_layers": 2,
                                                  "num_attention_heads": 4, "max_position_embeddings": 64},
                           "tokenizer": {"vocab_size": 300}, "train": {"sequence_length_tokens": 32}})
    total, trainable = matmul_weights(build_model(cfg.model, vocab_size(cfg), 0, 0, seed=0))
    planned = count_parameters(cfg.model, vocab_size(cfg)).matmul
    assert total == trainable
    assert planned == total


def test_lora_without_a_base_model_is_a_config_error() -> None:
    with pytest.raises(ConfigProblems, match="from_pretrained"):
        validate_config({"name": "t", "model": {"lora": {"enabled": True}}})



def test_lora_targets_the_model_does_not_have_are_refused_naming_those_it_has() -> None:
    pytest.importorskip("peft")
    from llmkit.errors import UsageError
    from llmkit.model.build import build_model
    from llmkit.model.lora import apply_lora

    cfg = _cfg("llama", target_modules=["c_attn"])
    model = build_model(cfg.model, vocab_size(cfg), 0, 0, seed=0)
    with pytest.raises(UsageError, match="c_attn") as info:
        apply_lora(model, cfg.model.lora, classify=False)
    assert "q_proj" in info.value.detail and "lm_head" not in info.value.detail


def test_trainer_state_refuses_missing_keys(tmp_path: Path) -> None:
    from llmkit.training.checkpoint import ChecksumError, TrainerState

    state = TrainerState(step=3, tokens_seen=10, train_time_s=1.0, nonfinite_skipped=0, config={}, data={},
                         data_position={}, param_groups=[], scaler=None, llmkit_version="0")
    assert TrainerState.from_json(state.to_json(), tmp_path) == state
    partial = {k: v for k, v in state.to_json().items() if k != "nonfinite_skipped"}
    with pytest.raises(ChecksumError, match="nonfinite_skipped"):
        TrainerState.from_json(partial, tmp_path)
