"""LoRA on a frozen base below fp32 (model.lora.base_bits 16 / 8 / 4), DoRA, and bitsandbytes'
8-bit AdamW, on bitsandbytes' CPU backend. The oracle for "what was trained" is transformers'
own BitsAndBytesConfig loading of the base with peft's adapter loaded on top."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmkit.config.load import load_config
from llmkit.errors import ConfigError
from llmkit.training.loop import train

from .helpers import make_run, tensors
from .test_tasks import sft_file

pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")


def run(cfg_path: Path, **kw):  # type: ignore[no-untyped-def]
    return train(load_config(cfg_path, environ={}), log=lambda _: None, **kw)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained llama, 64 wide (NF4 quantizes in blocks of 64)."""
    root = tmp_path_factory.mktemp("qbase")
    return run(make_run(root, model={"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2},
                        train={"max_steps": 20, "eval_every_steps": 20})).run_dir / "final"


def lora_run(root: Path, base: Path, bits: int, name: str = "q", steps: int = 8, **extra):  # type: ignore[no-untyped-def]
    lora = {"enabled": True, "r": 4, "base_bits": bits, **extra.pop("lora", {})}
    return make_run(root, name=name, train={"task": "sft", "max_steps": steps, "eval_every_steps": steps,
                                            "checkpoint_every_steps": 4, "learning_rate": 0.01, **extra},
                    model={"from_pretrained": str(base), "lora": lora},
                    tokenizer={"kind": "pretrained", "path": str(base)},
                    data={"sft_path": str(sft_file(root)), "val_fraction": 0.1})


def oracle(base: Path, adapter: Path, bits: int):  # type: ignore[no-untyped-def]
    """The base as transformers + bitsandbytes load it at ``bits``, with peft's adapter on top."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if bits == 16:
        kw = {"dtype": torch.bfloat16}
    else:
        quant = (BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
                 BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch.bfloat16))
        kw = {"dtype": torch.float32, "quantization_config": quant, "device_map": {"": "cpu"}}
    model = AutoModelForCausalLM.from_pretrained(str(base), **kw)
    for m in model.modules():  # the dequantize-and-matmul path on every CPU (as llmkit's settle)
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    return peft.PeftModel.from_pretrained(model, str(adapter)).eval()


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_adapters_on_a_low_bit_base_merge_into_the_dequantized_base(tmp_path: Path, base: Path, bits: int) -> None:
    from transformers import AutoModelForCausalLM

    result = run(lora_run(tmp_path, base, bits))
    final = result.run_dir / "final"
    saved = tensors(sorted((result.run_dir / "checkpoints").glob("step-*"))[-1] / "model.safetensors")
    assert saved and all("lora_" in n and t.dtype == torch.float32 for n, t in saved.items())  # fp32 adapters only
    trained = oracle(base, final / "adapter", bits)
    kinds = {type(m).__name__ for m in trained.modules()}
    assert {16: "Linear", 8: "Linear8bitLt", 4: "Linear4bit"}[bits] in kinds
    merged = AutoModelForCausalLM.from_pretrained(str(final)).eval()
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])
    with torch.no_grad():
        a, b = trained(input_ids=ids).logits.float(), merged(input_ids=ids).logits
    # the same weights (the base dequantized), different arithmetic: bf16 / int8 compute vs fp32
    assert float((a - b).abs().max()) < {16: 0.05, 8: 0.05, 4: 0.05}[bits]
    adapter = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base)  # `export --no-merge-lora` names its base
    report = json.loads((final / "llmkit.json").read_text())["merge"]
    assert report["base_bits"] == bits and report["max_logit_diff"] < 0.05
    assert report["trained"]["val_loss"] == pytest.approx(report["merged"]["val_loss"], rel=1e-3)
    if bits == 4:  # merged into the dequantized NF4 weights, not the original fp32 ones
        plain = AutoModelForCausalLM.from_pretrained(str(base))
        q = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(merged.state_dict()[q], plain.state_dict()[q])


def test_resume_with_a_4_bit_base_and_8_bit_adamw_is_exact(tmp_path: Path, base: Path) -> None:
    big = {"r": 64}  # 64 x 64 adapter matrices: bitsandbytes keeps 8-bit moments from 4,096 elements
    straight = run(lora_run(tmp_path, base, 4, name="straight", optimizer="adamw_8bit", lora=big))
    cut = lora_run(tmp_path, base, 4, name="cut", optimizer="adamw_8bit", lora=big)
    assert run(cut, stop_at_step=4).step == 4
    resumed = run(cut)
    assert resumed.step == 8
    a = tensors(straight.run_dir / "final" / "adapter" / "adapter_model.safetensors")
    b = tensors(resumed.run_dir / "final" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    states = tensors(resumed.run_dir / "checkpoints" / "step-000008" / "optimizer.safetensors")
    assert any(t.dtype == torch.uint8 for t in states.values())  # 8-bit moments were checkpointed


def test_dora_trains_a_magnitude_per_output_feature(tmp_path: Path, base: Path) -> None:
    result = run(lora_run(tmp_path, base, 4, lora={"dora": True, "target_modules": ["q_proj", "v_proj"]}))
    saved = tensors(result.run_dir / "final" / "adapter" / "adapter_model.safetensors")
    magnitudes = [n for n in saved if "lora_magnitude_vector" in n]
    assert len(magnitudes) == 4  # 2 layers x (q_proj, v_proj)
    assert json.loads((result.run_dir / "final" / "adapter" / "adapter_config.json").read_text())["use_dora"]


def test_paged_optimizer_on_a_cpu_is_refused_before_loading(tmp_path: Path, base: Path) -> None:
    with pytest.raises(ConfigError, match="paged_adamw_8bit needs a CUDA GPU") as info:
        run(lora_run(tmp_path, base, 4, optimizer="paged_adamw_8bit"))
    assert "adamw_8bit" in info.value.fix


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_the_plan_counts_the_base_as_it_loads(tmp_path: Path, base: Path, bits: int) -> None:
    """`llmkit plan`'s bytes for a base at ``bits`` are the loaded model's, quantization constants
    included (within 2%), and the model's shape comes from the directory's config.json."""
    from llmkit.model.build import load_model
    from llmkit.model.quantize import weight_bytes
    from llmkit.planning.memory import base_weight_bytes
    from llmkit.planning.pretrained import with_pretrained_shape

    cfg = load_config(lora_run(tmp_path, base, bits), environ={})
    shaped = with_pretrained_shape(cfg)
    assert shaped.model.hidden_size == 64 and cfg.model.hidden_size == 32  # the model's, not the config's numbers
    loaded = weight_bytes(load_model(base, False, base_bits=bits))
    planned = base_weight_bytes(shaped, bits)
    assert planned == pytest.approx(loaded, rel=0.02)


def test_a_classifier_on_a_4_bit_base_merges_with_its_trained_head(tmp_path: Path, base: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    f = tmp_path / "cls.jsonl"
    rows = [{"text": f"item {i} is {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"} for i in range(60)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_run(tmp_path, name="cls", train={"task": "classify", "max_steps": 6, "eval_every_steps": 6,
                                                "learning_rate": 0.01},
                   model={"from_pretrained": str(base), "lora": {"enabled": True, "r": 4, "base_bits": 4}},
                   tokenizer={"kind": "pretrained", "path": str(base)},
                   data={"classify_path": str(f), "val_fraction": 0.2})
    result = run(cfg)
    merged = AutoModelForSequenceClassification.from_pretrained(str(result.run_dir / "final")).eval()
    report = json.loads((result.run_dir / "final" / "llmkit.json").read_text())["merge"]
    assert merged.config.num_labels == 2 and report["max_logit_diff"] < 0.05
    assert report["trained"]["val_accuracy"] == report["merged"]["val_accuracy"]
