"""Several LoRA adapters on one base through the real server: chosen by the request's `model`,
listed by /v1/models, decoding in one batch exactly as PEFT's model of each adapter does; loaded
and unloaded while serving through vLLM's endpoints, behind the API key, while requests on other
adapters go on."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow  # servers with adapters made by peft: about a minute
peft = pytest.importorskip("peft")
PROMPTS = ["The for statement", "class A:", "while True", "import sys"]
KEY = "adapter-test-key"


@pytest.fixture(scope="module")
def adapter_dirs(long_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from llmkit.model.load import load_for_inference

    base, _, _ = load_for_inference(long_model_dir, device="cpu")
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for name, r, seed in (("a", 4, 1), ("b", 8, 2), ("c", 2, 3)):
        torch.manual_seed(seed)
        model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=r * 4, init_lora_weights=False,
                                                                         target_modules=["q_proj", "v_proj", "up_proj"]))
        model.save_pretrained(str(root / name))
        out[name] = root / name
    return out


def _oracle(long_model_dir: Path, adapter: Path | None, prompt: str) -> list[float]:
    """The greedy tokens' log-probabilities from PEFT's model of the adapter (the base's without one)."""
    from llmkit.generate.decode import stream
    from llmkit.generate.sampling import SamplingParams
    from llmkit.model.load import load_for_inference

    base, tok, _ = load_for_inference(long_model_dir, device="cpu")
    model = peft.PeftModel.from_pretrained(base, str(adapter)).eval() if adapter else base
    return [ev.logprob for ev in stream(model, tok, [tok.encode(prompt, add_special_tokens=False)],
                                        [SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True, logprobs=0)])]


def _close(served: list[float], oracle: list[float]) -> bool:
    return len(served) == len(oracle) == 12 and max(abs(a - b) for a, b in zip(served, oracle)) < 1e-4


def _complete(server: Server, model: str, prompt: str, **extra: Any) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                      json={"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True,
                            "logprobs": 0, **extra})


def _logprobs(r: httpx.Response) -> list[float]:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["logprobs"]["token_logprobs"]


@pytest.fixture(scope="module")
def multi(long_model_dir: Path, adapter_dirs: dict[str, Path]) -> Any:
    server = start_server(long_model_dir, "--adapter", f"a={adapter_dirs['a']}", "--adapter", f"b={adapter_dirs['b']}",
                          "--set", "serve.allow_adapter_loading=true", "--api-key-env", "LLMKIT_TEST_KEY",
                          "--max-batch-size", "16", env={"LLMKIT_TEST_KEY": KEY})
    yield server
    stop_server(server)


def test_models_lists_the_base_and_its_adapters(multi: Server) -> None:
    data = httpx.get(multi.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()["data"]
    assert [m["id"] for m in data] == ["t", "a", "b"] and all(m.get("parent") == "t" for m in data[1:])


def test_each_adapter_answers_as_peft_in_one_mixed_batch(multi: Server, long_model_dir: Path,
                                                         adapter_dirs: dict[str, Path]) -> None:
    jobs = [(model, prompt) for prompt in PROMPTS for model in ("t", "a", "b")]
    answers: dict[tuple[str, str], list[float]] = {}

    def run(job: tuple[str, str]) -> None:
        answers[job] = _logprobs(_complete(multi, *job))

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]  # 12 requests, three models, one batch
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for model, prompt in jobs[:6]:
        assert _close(answers[(model, prompt)], _oracle(long_model_dir, adapter_dirs.get(model), prompt)), (model, prompt)
    assert not _close(answers[("a", PROMPTS[0])], answers[("t", PROMPTS[0])])  # the adapter changes the model


def test_load_and_unload_while_serving(multi: Server, long_model_dir: Path, adapter_dirs: dict[str, Path]) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(multi.url + "/v1/load_lora_adapter", json={"lora_name": "c", "lora_path": str(adapter_dirs["c"])},
                      timeout=30).status_code == 401
    r = httpx.post(multi.url + "/v1/load_lora_adapter", headers=auth, timeout=30,
                   json={"lora_name": "c", "lora_path": str(adapter_dirs["c"])})
    assert r.status_code == 200, r.text
    assert _close(_logprobs(_complete(multi, "c", PROMPTS[0])), _oracle(long_model_dir, adapter_dirs["c"], PROMPTS[0]))
    for body, status, param in (({"lora_name": "c", "lora_path": str(adapter_dirs["a"])}, 400, "lora_name"),
                                ({"lora_name": "d", "lora_path": "/nonexistent/adapter"}, 400, "lora_path"),
                                ({"lora_name": "t", "lora_path": str(adapter_dirs["a"])}, 400, "lora_name"),
                                ({"lora_name": "bad name", "lora_path": "x"}, 400, "lora_name")):
        r = httpx.post(multi.url + "/v1/load_lora_adapter", headers=auth, json=body, timeout=30)
        assert r.status_code == status and r.json()["error"]["param"] == param, (body, r.text)
    # a long request on "a" keeps going while "c" is unloaded
    done: dict[str, Any] = {}
    long_one = threading.Thread(target=lambda: done.update(r=_complete(multi, "a", PROMPTS[1], max_tokens=400)))
    long_one.start()
    r = httpx.post(multi.url + "/v1/unload_lora_adapter", headers=auth, json={"lora_name": "c"}, timeout=30)
    assert r.status_code == 200
    assert _complete(multi, "c", PROMPTS[0]).status_code == 404
    long_one.join()
    assert done["r"].status_code == 200 and done["r"].json()["usage"]["completion_tokens"] > 12
    assert httpx.post(multi.url + "/v1/unload_lora_adapter", headers=auth, json={"lora_name": "c"},
                      timeout=30).status_code == 404
    assert "c" not in [m["id"] for m in httpx.get(multi.url + "/v1/models", headers=auth, timeout=10).json()["data"]]


def test_loading_is_off_unless_allowed(long_server: Server) -> None:
    r = httpx.post(long_server.url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"}, timeout=10)
    assert r.status_code == 403 and "allow_adapter_loading" in r.json()["error"]["message"]
