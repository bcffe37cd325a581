"""Each task end to end on tiny data: pretrain (gpt2 and llama), SFT, LoRA, classification;
plus the bad input that must be refused before step 1."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from llmkit.config.load import load_config
from llmkit.errors import ConfigError, LlmkitError, UsageError
from llmkit.training.loop import train

from .helpers import llmkit, losses, make_run


def run(cfg_path: Path, **kw):  # type: ignore[no-untyped-def]
    return train(load_config(cfg_path, environ={}), log=lambda _: None, **kw)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained llama (final/ directory) for the fine-tuning tests."""
    root = tmp_path_factory.mktemp("pre")
    result = run(make_run(root, train={"max_steps": 30, "eval_every_steps": 30}))
    return result.run_dir / "final"


def sft_file(root: Path, n: int = 40) -> Path:
    f = root / "sft.jsonl"
    rows = [{"prompt": f"What is {i} plus one?", "completion": f"{i} plus one is {i + 1}."} for i in range(n)]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_pretrain_lowers_validation_perplexity(tmp_path: Path, architecture: str) -> None:
    model = {"architecture": architecture, "num_key_value_heads": None if architecture == "gpt2" else 1}
    cfg = make_run(tmp_path, model=model, train={"max_steps": 100, "eval_every_steps": 100})
    result = run(cfg)
    assert result.eval.val_ppl < 512 / 2  # untrained: about the vocabulary size (512)
    curve = losses(result.run_dir)
    last_ten = sum(curve[s] for s in range(91, 101)) / 10  # one step's loss of 4 windows is noisy
    assert curve[1] > 6.0 and last_ten < curve[1] - 0.8  # from ln(512) = 6.24 nats
    final = result.run_dir / "final"
    hf = AutoModelForCausalLM.from_pretrained(str(final))
    tok = AutoTokenizer.from_pretrained(str(final))
    assert hf.config.model_type == architecture and len(tok) == 512
    ids = torch.tensor([tok.encode("The for statement")])
    assert hf(ids).logits.shape == (1, ids.shape[1], 512)


def test_sft_trains_only_on_completions(tmp_path: Path, pretrained: Path) -> None:
    cfg = make_run(tmp_path, train={"task": "sft", "max_steps": 30, "eval_every_steps": 10, "learning_rate": 0.003},
                   model={"from_pretrained": str(pretrained), "max_position_embeddings": 32},
                   tokenizer={"kind": "pretrained", "path": str(pretrained)},
                   data={"sft_path": str(sft_file(tmp_path)), "val_fraction": 0.1})
    result = run(cfg)
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert AutoModelForCausalLM.from_pretrained(str(result.run_dir / "final")) is not None


def test_sft_packing_runs(tmp_path: Path, pretrained: Path) -> None:
    cfg = make_run(tmp_path, train={"task": "sft", "max_steps": 6, "eval_every_steps": 6},
                   model={"from_pretrained": str(pretrained)},
                   tokenizer={"kind": "pretrained", "path": str(pretrained)},
                   data={"sft_path": str(sft_file(tmp_path)), "val_fraction": 0.1, "sft_packing": True})
    first = run(cfg, stop_at_step=3)
    assert run(cfg).step == 6 and first.step == 3


def test_lora_trains_adapters_only_and_merges(tmp_path: Path, pretrained: Path) -> None:
    cfg = make_run(tmp_path, train={"task": "sft", "max_steps": 20, "eval_every_steps": 20, "learning_rate": 0.01},
                   model={"from_pretrained": str(pretrained), "lora": {"enabled": True, "r": 4}},
                   tokenizer={"kind": "pretrained", "path": str(pretrained)},
                   data={"sft_path": str(sft_file(tmp_path)), "val_fraction": 0.1})
    result = run(cfg)
    final = result.run_dir / "final"
    assert (final / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(final))
    base = AutoModelForCausalLM.from_pretrained(str(pretrained))
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # only adapted projections moved
    from safetensors.torch import load_file
    from llmkit.training.checkpoint import committed

    saved = load_file(str(committed(result.run_dir / "checkpoints")[-1][1] / "model.safetensors"))
    assert saved and all("lora_" in n for n in saved)  # checkpoints hold only the adapters


def test_classification_learns_a_rule(tmp_path: Path) -> None:
    f = tmp_path / "cls.jsonl"
    words = ["apple", "river", "stone", "cloud", "glass", "paper"]
    rows = [{"text": f"{words[i % 6]} {words[(i * 7) % 6]} {'good' if i % 2 else 'bad'} {words[(i * 5) % 6]}",
             "label": "pos" if i % 2 else "neg"} for i in range(200)]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = make_run(tmp_path, train={"task": "classify", "max_steps": 60, "eval_every_steps": 20,
                                    "learning_rate": 0.01, "global_batch_size": 8, "micro_batch_size": 8},
                   data={"classify_path": str(f), "val_fraction": 0.1})
    result = run(cfg)
    assert result.eval.val_accuracy >= 0.9
    clf = AutoModelForSequenceClassification.from_pretrained(str(result.run_dir / "final"))
    assert clf.config.num_labels == 2 and clf.config.id2label[1] == "pos"


# --- bad input, refused before step 1 -----------------------------------------------------------


def test_run_dir_with_checkpoints_and_resume_never(tmp_path: Path) -> None:
    cfg = make_run(tmp_path)
    run(cfg, stop_at_step=5)
    with pytest.raises(UsageError, match="already holds checkpoints"):
        run(cfg, resume="never")


def test_checkpoint_from_a_different_shape(tmp_path: Path) -> None:
    cfg = make_run(tmp_path)
    run(cfg, stop_at_step=5)
    wider = make_run(tmp_path, prepared=False, model={"hidden_size": 64})
    with pytest.raises(UsageError, match="model.hidden_size: 32 -> 64"):
        run(wider)
    with pytest.raises(UsageError, match="different shape"):
        run(wider, allow_config_change=True)


def test_unprepared_run_says_which_command(tmp_path: Path) -> None:
    cfg = make_run(tmp_path, prepared=False)
    with pytest.raises(UsageError, match="meta.json is missing") as info:
        run(cfg)
    assert "llmkit prepare" in str(info.value)


def test_dataset_smaller_than_one_batch(tmp_path: Path, pretrained: Path) -> None:
    cfg = make_run(tmp_path, train={"task": "sft", "global_batch_size": 32, "micro_batch_size": 32},
                   model={"from_pretrained": str(pretrained)},
                   tokenizer={"kind": "pretrained", "path": str(pretrained)},
                   data={"sft_path": str(sft_file(tmp_path, n=20)), "val_fraction": 0.1})
    with pytest.raises(UsageError, match="fewer than one micro-batch"):
        run(cfg)


def test_context_longer_than_pretrained_positions(tmp_path: Path, pretrained: Path) -> None:
    cfg = make_run(tmp_path, train={"task": "sft", "sequence_length_tokens": 64},
                   model={"from_pretrained": str(pretrained), "max_position_embeddings": 64},
                   tokenizer={"kind": "pretrained", "path": str(pretrained)},
                   data={"sft_path": str(sft_file(tmp_path)), "val_fraction": 0.1})
    with pytest.raises(ConfigError, match="exceeds the model's 32 positions"):
        run(cfg)


def test_pickle_only_model_dir_is_refused(tmp_path: Path, pretrained: Path) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((pretrained / "config.json").read_text())
    (evil / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    cfg = make_run(tmp_path, train={"task": "sft"}, model={"from_pretrained": str(evil)},
                   tokenizer={"kind": "pretrained", "path": str(pretrained)},
                   data={"sft_path": str(sft_file(tmp_path)), "val_fraction": 0.1})
    with pytest.raises(LlmkitError, match="no safetensors weights"):
        run(cfg)
    remote = tmp_path / "remote"
    remote.mkdir()
    hf = json.loads((pretrained / "config.json").read_text())
    hf["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
    (remote / "config.json").write_text(json.dumps(hf))
    cfg2 = make_run(tmp_path, name="r", train={"task": "sft"}, model={"from_pretrained": str(remote)},
                    tokenizer={"kind": "pretrained", "path": str(pretrained)},
                    data={"sft_path": str(sft_file(tmp_path)), "val_fraction": 0.1})
    with pytest.raises(ConfigError, match="auto_map"):
        run(cfg2)


def test_cli_train_end_to_end(tmp_path: Path) -> None:
    cfg = make_run(tmp_path, train={"max_steps": 12, "eval_every_steps": 6, "log_every_steps": 3})
    out = llmkit("train", "--config", str(cfg))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done at step 12" in out.stdout and "val_ppl" in out.stdout
    run_dir = tmp_path / "runs" / "t"
    assert {"config.yaml", "manifest.json", "metrics.jsonl", "final", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    assert sorted(losses(run_dir)) == [3, 6, 9, 12]
    assert math.isfinite(losses(run_dir)[12])


def test_sft_packing_keeps_masks_and_fills_rows(tmp_path: Path, pretrained: Path) -> None:
    from llmkit.config.load import load_config as load
    from llmkit.data.sft import IGNORE_INDEX
    from llmkit.data.batches import SftBatches

    cfg_path = make_run(tmp_path, train={"task": "sft"}, model={"from_pretrained": str(pretrained)},
                        tokenizer={"kind": "pretrained", "path": str(pretrained)},
                        data={"sft_path": str(sft_file(tmp_path)), "val_fraction": 0.1, "sft_packing": True})
    cfg = load(cfg_path, environ={})
    packed = SftBatches(cfg, tmp_path / "runs" / "t", micro=2)
    batch = packed.next_micro_batch()
    tok = AutoTokenizer.from_pretrained(str(pretrained))
    for row_ids, row_labels in zip(batch["input_ids"], batch["labels"]):
        trained = tok.decode([int(t) for t in row_labels if t != IGNORE_INDEX])
        # only completions are trained on (the 32-token context may cut the last one short)
        assert trained and re.fullmatch(r"(\d+ plus one is \d+\.<\|im_end\|>\n)*[\d a-z.]*", trained), trained
    state = packed.state_dict()
    again = SftBatches(cfg, tmp_path / "runs" / "t", micro=2)
    again.load_state_dict(state)
    assert (again.next_micro_batch()["input_ids"] == packed.next_micro_batch()["input_ids"]).all()
