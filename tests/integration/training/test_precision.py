"""train.precision bf16-weights: bf16 weights and activations, fp32 master weights and AdamW state.

Quality against fp32 after 300 steps (issue 18: within 2% on validation loss), checkpoints and
final/ holding the fp32 masters, an exact resume, and the combinations it refuses."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit.config.load import load_config
from llmkit.device import TrainPrecision, train_precision
from llmkit.errors import ConfigError
from llmkit.training.loop import train
from llmkit.training.master import check_supported

from .helpers import make_run, same_tensors, tensors

pytestmark = pytest.mark.slow  # bf16 runs to a target loss

SMALL = {"model": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2},
         "train": {"global_batch_size": 8, "micro_batch_size": 8, "max_steps": 300, "warmup_steps": 20,
                   "eval_every_steps": 300, "eval_batches": 8, "checkpoint_every_steps": 300, "log_every_steps": 50}}


def test_bf16_weights_reaches_the_fp32_validation_loss_within_2_percent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    results, logs = {}, {}
    for precision in ("fp32", "bf16-weights"):
        cfg = make_run(tmp_path, name=precision, model=SMALL["model"], train={**SMALL["train"], "precision": precision})
        logged: list[str] = []
        results[precision] = train(load_config(cfg, environ={}), log=logged.append)
        logs[precision] = logged
    assert any("bf16 weights, fp32 master weights" in line for line in logs["bf16-weights"])
    fp32, bf16w = results["fp32"].eval.val_loss, results["bf16-weights"].eval.val_loss
    assert fp32 < 5.5  # it learned something (ln 512 = 6.24 at the start)
    assert abs(bf16w / fp32 - 1) < 0.02, (fp32, bf16w)


def test_checkpoints_and_final_hold_fp32_masters_and_resume_exactly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    train_cfg = {"max_steps": 10, "checkpoint_every_steps": 5, "eval_every_steps": 10, "precision": "bf16-weights"}
    whole = train(load_config(make_run(tmp_path, name="whole", train=train_cfg), environ={}), log=lambda _: None)
    cfg = make_run(tmp_path, name="split", train=train_cfg)
    first = train(load_config(cfg, environ={}), stop_at_step=5, log=lambda _: None)
    assert first.step == 5
    step5 = tensors(first.run_dir / "checkpoints" / "step-000005" / "model.safetensors")
    assert {t.dtype for t in step5.values()} == {torch.float32}
    # the masters are not the bf16 weights rounded: at least one differs from its own bf16 rounding
    assert any(not torch.equal(t, t.bfloat16().float()) for t in step5.values())
    resumed = train(load_config(cfg, environ={}), log=lambda _: None)
    assert resumed.step == 10
    a = tensors(whole.run_dir / "final" / "model.safetensors")
    b = tensors(resumed.run_dir / "final" / "model.safetensors")
    assert {t.dtype for t in a.values()} == {torch.float32}
    assert same_tensors(a, b)
    metrics = [json.loads(line) for line in (whole.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in metrics if r["kind"] == "train")  # finite, no NaN


def test_auto_picks_bf16_weights_only_where_it_applies() -> None:
    assert train_precision("bf16-weights", "cuda", compute="bf16").bf16_weights
    assert train_precision("auto", "cpu", compute="bf16").bf16_weights
    assert not train_precision("auto", "cpu", compute="fp32").bf16_weights  # a CPU without fast bf16
    assert not train_precision("auto", "cuda", compute="bf16").bf16_weights  # GPUs: autocast (not measured)
    assert not train_precision("auto", "cpu", lora=True, compute="bf16").bf16_weights  # LoRA
    assert not train_precision("auto", "cpu", processes=2, compute="bf16").bf16_weights  # several processes
    assert not train_precision("auto", "cpu", private=True, compute="bf16").bf16_weights  # privacy.dp
    assert not train_precision("bf16", "cpu", compute="bf16").bf16_weights  # autocast asked for
    assert train_precision("auto", "cpu", private=True) == TrainPrecision("fp32", False)  # privacy.dp: fp32


@pytest.mark.parametrize("lora,distributed,private,device,word", [
    (True, False, False, "cpu", "LoRA"), (False, True, False, "cuda", "several processes"),
    (False, False, True, "cpu", "privacy.dp"), (False, False, False, "mps", "MPS")])
def test_explicit_bf16_weights_refuses_what_it_does_not_cover(lora, distributed, private, device, word) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as err:
        check_supported(lora, distributed, private, device)
    assert word in err.value.summary and "bf16" in err.value.fix
    check_supported(False, False, False, "cpu")  # the supported case passes
