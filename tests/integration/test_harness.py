"""The lm-evaluation-harness adapter: exact log-likelihoods, and local tasks end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("lm_eval")

import torch  # noqa: E402

from llmkit.eval.harness import make_lm, run_harness  # noqa: E402
from llmkit.model.load import load_for_inference  # noqa: E402

from .train.helpers import make_run  # noqa: E402

TASKS = Path(__file__).parents[1] / "fixtures" / "harness"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmkit.config.load import load_config
    from llmkit.train.loop import train

    root = tmp_path_factory.mktemp("h")
    cfg = make_run(root, train={"max_steps": 20, "eval_every_steps": 20})
    return train(load_config(cfg, environ={}), log=lambda _: None).run_dir


def direct_logprob(model, ids: list[int], n_cont: int) -> float:  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits.float(), -1)[0]
    return sum(float(logp[i - 1, ids[i]]) for i in range(len(ids) - n_cont, len(ids)))


def test_loglikelihood_matches_a_direct_forward(model_dir: Path) -> None:
    model, tok, _ = load_for_inference(model_dir, device="cpu")
    lm = make_lm(model, tok, batch_size=2)
    reqs = [SimpleNamespace(args=("The for statement is", " used to iterate")),
            SimpleNamespace(args=("A class", " is")), SimpleNamespace(args=("x", " = 1"))]
    got = lm.loglikelihood(reqs)
    for (ctx, cont), (score, _greedy) in zip((r.args for r in reqs), got):
        whole = tok.encode(ctx + cont, add_special_tokens=False)
        n = len(whole) - len(tok.encode(ctx, add_special_tokens=False))
        assert math.isclose(score, direct_logprob(model, whole, n), rel_tol=1e-4, abs_tol=1e-4)
    text = "The while statement is used for repeated execution."
    rolling = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])[0]
    ids = [tok.eos_token_id] + tok.encode(text, add_special_tokens=False)
    assert math.isclose(rolling, direct_logprob(model, ids, len(ids) - 1), rel_tol=1e-4, abs_tol=1e-4)


def test_local_tasks_through_the_cli(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    work = tmp_path / "tasks"
    shutil.copytree(TASKS, work)
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    out = cli("eval", str(model_dir), "--task", "llmkit_pydocs_mc", "--task", "llmkit_pydocs_ppl", "--task",
              "llmkit_pydocs_gen", "--task-dir", ".", cwd=work, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    harness = json.loads((model_dir / "eval.json").read_text())["harness"]
    assert harness["llmkit_pydocs_mc"]["sample_len"] == 8
    assert 0 <= harness["llmkit_pydocs_mc"]["acc,none"] <= 1
    assert harness["llmkit_pydocs_ppl"]["bits_per_byte,none"] > 0
    assert "exact_match,none" in harness["llmkit_pydocs_gen"]


def test_unknown_task_is_a_clear_error(model_dir: Path) -> None:
    from llmkit.errors import UsageError

    with pytest.raises(UsageError, match="unknown harness task"):
        run_harness(model_dir, ["no_such_task_llmkit"], TASKS)
