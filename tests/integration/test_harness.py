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

from .training.helpers import make_run  # noqa: E402

pytestmark = pytest.mark.slow  # lm-evaluation-harness runs

TASKS = Path(__file__).parents[1] / "fixtures" / "harness"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmkit.config.load import load_config
    from llmkit.training.loop import train

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


def test_harness_against_llmkit_serve_equals_llmkit_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-evaluation-harness's own `local-completions` and `local-chat-completions` clients against a
    real `llmkit serve`: loglikelihoods equal `llmkit eval --task`'s (its in-process adapter) within
    1e-4, and the generate_until tasks run through both endpoints."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from llmkit.config.load import load_config
    from llmkit.training.loop import train

    from .serving.conftest import start_server, stop_server

    cfg = make_run(tmp_path, model={"max_position_embeddings": 128},  # room for chat-templated prompts
                   train={"max_steps": 20, "eval_every_steps": 20})
    model_dir = train(load_config(cfg, environ={}), log=lambda _: None).run_dir

    work = tmp_path / "tasks"
    shutil.copytree(TASKS, work)
    monkeypatch.chdir(work)
    for key, value in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                       "HF_DATASETS_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    manager = TaskManager(include_path=str(work))
    tasks = ["llmkit_pydocs_mc", "llmkit_pydocs_gen"]
    model, tok, _ = load_for_inference(model_dir, device="cpu")
    ours = simple_evaluate(model=make_lm(model, tok, batch_size=2), tasks=tasks, task_manager=manager,
                           log_samples=True)
    server = start_server(model_dir)
    try:
        common = f"model=t,tokenizer={model_dir / 'final'},tokenizer_backend=huggingface,max_retries=1"
        remote = simple_evaluate(model="local-completions", tasks=tasks, task_manager=manager, log_samples=True,
                                 model_args=f"base_url={server.url}/v1/completions,{common}")
        chat = simple_evaluate(model="local-chat-completions", tasks=["llmkit_pydocs_gen"], task_manager=manager,
                               apply_chat_template=True, log_samples=True,
                               model_args=f"base_url={server.url}/v1/chat/completions,{common}")
    finally:
        stop_server(server)

    def scores(out: dict, task: str) -> list[tuple[float, bool]]:  # type: ignore[type-arg]
        return [tuple(r[0]) for s in sorted(out["samples"][task], key=lambda s: s["doc_id"]) for r in s["resps"]]

    mine, theirs = scores(ours, "llmkit_pydocs_mc"), scores(remote, "llmkit_pydocs_mc")
    assert len(mine) == len(theirs) == 32  # 8 questions x 4 choices
    worst = max(abs(a[0] - b[0]) for a, b in zip(mine, theirs))
    print(f"\nlm-eval local-completions vs llmkit eval: {len(mine)} loglikelihoods, largest difference {worst:.2e}")
    assert worst < 1e-4 and [a[1] for a in mine] == [b[1] for b in theirs]
    assert remote["results"]["llmkit_pydocs_mc"]["acc,none"] == ours["results"]["llmkit_pydocs_mc"]["acc,none"]

    def generations(out: dict) -> list[str]:  # type: ignore[type-arg]
        return [s["resps"][0][0] for s in sorted(out["samples"]["llmkit_pydocs_gen"], key=lambda s: s["doc_id"])]

    assert generations(remote) == generations(ours)  # greedy until "\n", 8 tokens
    assert len(generations(chat)) == 8 and "exact_match,none" in chat["results"]["llmkit_pydocs_gen"]
