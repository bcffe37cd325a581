"""privacy.dp (DP-SGD with Opacus): per-example clipping is what the optimizer applies, epsilon is
the accountant's for the steps taken, a resume continues bit for bit, and what cannot be done
privately is refused before step 1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from llmkit.config.load import load_config
from llmkit.errors import ConfigError, LlmkitError
from llmkit.training.loop import train

from .helpers import llmkit, make_run, same_tensors, tensors
from .test_tasks import sft_file

pytestmark = pytest.mark.slow  # Opacus runs

pytest.importorskip("opacus")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dppre")
    return train(load_config(make_run(root, train={"max_steps": 30, "eval_every_steps": 30}), environ={}),
                 log=lambda _: None).run_dir / "final"


def dp_run(root: Path, pretrained: Path, name: str = "dp", dp: dict | None = None, **train_kw) -> Path:  # type: ignore[type-arg]
    return make_run(root, name=name,
                    train={"task": "sft", "max_steps": 6, "eval_every_steps": 3, "checkpoint_every_steps": 3,
                           "global_batch_size": 4, "micro_batch_size": 2, **train_kw},
                    model={"from_pretrained": str(pretrained)}, tokenizer={"kind": "pretrained", "path": str(pretrained)},
                    data={"sft_path": str(sft_file(root, n=100)), "val_fraction": 0.1},
                    privacy={"dp": dp or {"enabled": True, "noise_multiplier": 1.0}})


def metrics(run: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_update_is_the_mean_of_per_example_clipped_gradients(tmp_path: Path, pretrained: Path) -> None:
    """With no noise, the gradient AdamW receives equals: each example's own gradient (computed
    alone, without Opacus), clipped to max_grad_norm, summed, divided by the expected batch size."""
    from llmkit.data.batches import task_batches
    from llmkit.model.build import load_model
    from llmkit.objectives.lm import OBJECTIVE as LM
    from llmkit.training.dp import DpTrainer

    cfg = load_config(dp_run(tmp_path, pretrained, dp={"enabled": True, "noise_multiplier": 0.0,
                                                       "max_grad_norm": 0.05}, grad_clip_norm=None), environ={})
    data = task_batches(cfg, tmp_path / "runs" / "dp", 2)
    model = load_model(pretrained, False)
    reference = load_model(pretrained, False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    dp = DpTrainer(cfg, model, opt, data, 2, 6, LM, lambda _: None)
    seen: dict[str, torch.Tensor] = {}
    account = dp.optimizer.step_hook

    def capture(o):  # type: ignore[no-untyped-def]
        account(o)
        for name, p in model.named_parameters():
            seen[name] = p.grad.detach().clone()

    dp.optimizer.attach_step_hook(capture)
    step = next(s for s in range(1, 50) if len(dp.sample(s)) >= 3)  # a batch that spans two micro-batches
    chosen = dp.sample(step)
    dp.accumulate(step)
    dp.optimizer.step()

    total = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
    norms = []
    for i in chosen:
        reference.zero_grad()
        batch = {k: torch.from_numpy(v) for k, v in data.collate_train([i]).items()}
        LM.example_losses(reference, batch).sum().backward()
        grads = {n: p.grad for n, p in reference.named_parameters()}
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
        norms.append(norm)
        for n, g in grads.items():
            total[n] += g * min(1.0, 0.05 / (norm + 1e-6))
    assert min(norms) > 0.05  # every example was clipped: the test shows clipping, not a pass-through
    for n, g in total.items():
        torch.testing.assert_close(seen[n], g / 4, rtol=1e-4, atol=1e-7)


def test_epsilon_is_the_accountants_and_a_resume_continues_exactly(tmp_path: Path, pretrained: Path) -> None:
    from opacus.accountants import RDPAccountant

    straight = train(load_config(dp_run(tmp_path, pretrained, "a"), environ={}), log=lambda _: None).run_dir
    # the same run killed after step 3: its directory with the step-6 checkpoint and final/ gone
    import shutil

    resumed = tmp_path / "runs" / "b"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints/step-000006")
    shutil.rmtree(resumed / "final")
    cfg = load_config(dp_run(tmp_path, pretrained, "a"), environ={})
    result = train(cfg, run_dir=resumed, log=lambda _: None)
    assert result.step == 6
    a, b = metrics(straight), metrics(resumed)
    assert any(r["kind"] == "resume" and r["step"] == 3 for r in b)
    eps_a = {r["step"]: r["epsilon"] for r in a if r["kind"] == "train"}
    eps_b = {r["step"]: r["epsilon"] for r in b if r["kind"] == "train"}
    assert eps_a == eps_b and len(eps_a) == 6
    assert same_tensors(tensors(straight / "final/model.safetensors"), tensors(resumed / "final/model.safetensors"))
    assert same_tensors(tensors(straight / "checkpoints/step-000006/optimizer.safetensors"),
                        tensors(resumed / "checkpoints/step-000006/optimizer.safetensors"))

    examples = json.loads((straight / "data/sft/meta.json").read_text())["train_examples"]
    q, delta = 4 / examples, 1 / (10 * examples)
    expected = RDPAccountant()
    expected.history = [(1.0, q, 6)]
    last = [r for r in a if r["kind"] == "train"][-1]
    assert last["step"] == 6 and last["epsilon"] == pytest.approx(expected.get_epsilon(delta), rel=1e-9)
    assert last["delta"] == pytest.approx(delta)
    state = json.loads((straight / "checkpoints/step-000006/trainer_state.json").read_text())["dp"]
    assert state["history"] == [[1.0, pytest.approx(q), 6]] and state["epsilon"] == last["epsilon"]
    other = train(load_config(dp_run(tmp_path, pretrained, "c"), environ={}), log=lambda _: None, stop_at_step=1)
    seed_c = json.loads((other.run_dir / "checkpoints/step-000001/trainer_state.json").read_text())["dp"]["noise_seed"]
    assert state["noise_seed"] != seed_c  # each run draws its own secret noise seed, not one from the config


def test_target_epsilon_is_not_exceeded(tmp_path: Path, pretrained: Path) -> None:
    cfg = dp_run(tmp_path, pretrained, "t", dp={"enabled": True, "target_epsilon": 2.0, "delta": 1e-3}, max_steps=20,
                 checkpoint_every_steps=20, eval_every_steps=20)
    out = llmkit("train", "--config", str(cfg))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "privacy.dp: epsilon" in out.stdout and "at delta 0.001" in out.stdout
    spent = [r["epsilon"] for r in metrics(tmp_path / "runs/t") if r["kind"] == "train"][-1]
    assert 1.8 <= spent <= 2.0
    report = llmkit("report", str(tmp_path / "runs/t"))
    assert report.returncode == 0
    html = (tmp_path / "runs/t/report.html").read_text()
    assert "DP-SGD (Opacus)" in html and f"{spent:.3f} at delta 0.001" in html


@pytest.mark.parametrize("change, message", [
    ({"train": {"task": "pretrain"}}, "covers fine-tuning"),
    ({"data": {"sft_packing": True}}, "one example per row"),
    ({"train": {"precision": "bf16"}}, "trains in fp32"),
    ({"train": {"max_steps": None, "max_time_s": 60}, "privacy": {"dp": {"target_epsilon": 1.0, "noise_multiplier": None}}},
     "needs train.max_steps"),
    ({"privacy": {"dp": {"target_epsilon": 1.0}}}, "exactly one of"),
    ({"launch": {"nodes": 2}}, "one process"),
])
def test_what_dp_cannot_do_is_refused_by_the_config(tmp_path: Path, pretrained: Path, change: dict, message: str) -> None:  # type: ignore[type-arg]
    import yaml

    from .helpers import deep_update

    path = dp_run(tmp_path, pretrained)
    data = deep_update(yaml.safe_load(path.read_text()), change)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(LlmkitError, match=message):
        load_config(path, environ={})


def test_layers_without_per_example_gradients_are_refused(tmp_path: Path) -> None:
    """GPT-2's learned position embedding sees the whole batch as one example: refused before step 1."""
    gpt2 = train(load_config(make_run(tmp_path, name="g", model={"architecture": "gpt2", "num_key_value_heads": None},
                                      train={"max_steps": 2, "eval_every_steps": 2}), environ={}),
                 log=lambda _: None).run_dir / "final"
    with pytest.raises(ConfigError, match="per-example gradients of some parameters cannot be separated") as err:
        train(load_config(dp_run(tmp_path, gpt2, "g2"), environ={}), log=lambda _: None)
    assert "wpe" in err.value.detail
    assert not (tmp_path / "runs/g2/checkpoints").exists()


def test_classification_and_lora_train_privately(tmp_path: Path, pretrained: Path) -> None:
    rows = [{"text": f"{'good' if i % 2 else 'bad'} item {i}", "label": "pos" if i % 2 else "neg"} for i in range(120)]
    (tmp_path / "cls.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cls = make_run(tmp_path, name="c", train={"task": "classify", "max_steps": 4, "eval_every_steps": 4,
                                               "global_batch_size": 8, "micro_batch_size": 4},
                   data={"classify_path": str(tmp_path / "cls.jsonl"), "val_fraction": 0.1},
                   privacy={"dp": {"enabled": True, "noise_multiplier": 0.8}})
    lora = dp_run(tmp_path, pretrained, "l")
    import yaml

    data = yaml.safe_load(lora.read_text())
    data["model"]["lora"] = {"enabled": True, "r": 4}
    lora.write_text(yaml.safe_dump(data))
    for cfg, name in ((cls, "c"), (lora, "l")):
        result = train(load_config(cfg, environ={}), log=lambda _: None)
        assert result.reason == "completed"
        eps = [r["epsilon"] for r in metrics(tmp_path / "runs" / name) if r["kind"] == "train"]
        assert len(eps) == 4 if name == "c" else 6
        assert all(b > a for a, b in zip(eps, eps[1:]))  # every step spends privacy
