"""`llmkit export` and `llmkit verify`: what users take elsewhere behaves as what they evaluated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmkit.config.load import load_config
from llmkit.errors import UsageError
from llmkit.exporting.gguf import export_gguf, tensor_names, unpermute_rotary
from llmkit.exporting.hf import export_hf
from llmkit.exporting.verify import render, verify
from llmkit.training.loop import train

from .training.helpers import make_run

pytestmark = pytest.mark.slow  # exports, verification, servers


def trained(root: Path, **sections) -> Path:  # type: ignore[no-untyped-def]
    cfg = make_run(root, **sections)
    return train(load_config(cfg, environ={}), log=lambda _: None).run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("exp")
    out = {}
    for arch in ("llama", "gpt2"):
        (base / arch).mkdir()
        out[arch] = trained(base / arch, model={"architecture": arch,
                                                "num_key_value_heads": 1 if arch == "llama" else None},
                            train={"max_steps": 8, "eval_every_steps": 8})
    sft = base / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(30)))
    (base / "lora").mkdir()
    pre = out["llama"] / "final"
    out["lora"] = trained(base / "lora", train={"task": "sft", "max_steps": 6, "eval_every_steps": 6},
                          model={"from_pretrained": str(pre), "lora": {"enabled": True, "r": 4}},
                          tokenizer={"kind": "pretrained", "path": str(pre)},
                          data={"sft_path": str(sft), "val_fraction": 0.1})
    return out


@pytest.mark.parametrize("kind", ["llama", "gpt2", "lora"])
def test_hf_export_loads_with_plain_transformers_and_matches(runs: dict[str, Path], tmp_path: Path, kind: str) -> None:
    run = runs[kind]
    out = tmp_path / "export"
    export_hf(run, out)
    theirs = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ours = AutoModelForCausalLM.from_pretrained(str(run / "final")).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template and tok.eos_token == "<|endoftext|>"
    ids = torch.tensor([tok.encode("The for statement is")])
    with torch.inference_mode():
        assert float((ours(ids).logits - theirs(ids).logits).abs().max()) <= 1e-5
        a = ours.generate(ids, max_new_tokens=10, do_sample=False)
        b = theirs.generate(ids, max_new_tokens=10, do_sample=False)
    assert a.tolist() == b.tolist()
    report = verify(run, out)
    assert report.ok, report


def test_lora_adapter_export(runs: dict[str, Path], tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    out = tmp_path / "adapter"
    export_hf(runs["lora"], out, merge_lora=False)
    assert (out / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(str(runs["llama"] / "final"))
    model = peft.PeftModel.from_pretrained(base, str(out)).merge_and_unload().eval()
    merged = AutoModelForCausalLM.from_pretrained(str(runs["lora"] / "final")).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        assert float((model(ids).logits - merged(ids).logits).abs().max()) <= 1e-5
    with pytest.raises(UsageError, match="not a LoRA run"):
        export_hf(runs["llama"], tmp_path / "x", merge_lora=False)


def test_sharded_export_has_an_index(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    export_hf(runs["llama"], out, max_shard_size="20KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert AutoModelForCausalLM.from_pretrained(str(out)) is not None


def test_low_precision_export_reports_the_difference(runs: dict[str, Path], tmp_path: Path) -> None:
    result = export_hf(runs["llama"], tmp_path / "bf16", dtype="bfloat16", prompts=[[5, 6, 7], [9, 10]])
    assert result.max_logit_diff > 0
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16")).dtype == torch.bfloat16


def test_verify_fails_on_a_broken_tokenizer(runs: dict[str, Path], tmp_path: Path, cli) -> None:
    out = tmp_path / "broken"
    export_hf(runs["lora"], out)
    tok = json.loads((out / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|im_end|>"]
    (out / "tokenizer.json").write_text(json.dumps(tok))  # the end-of-turn token is gone
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    for key in ("extra_special_tokens", "additional_special_tokens"):
        tcfg[key] = [t for t in tcfg.get(key, []) if t != "<|im_end|>"]
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg))
    result = cli("verify", str(runs["lora"]), "--exported", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verdict: FAIL" in result.stdout and "DIFFERENT" in result.stdout
    good = cli("verify", str(runs["lora"]))
    assert good.returncode == 0 and "verdict: PASS" in good.stdout


def test_export_bad_input(runs: dict[str, Path], tmp_path: Path, cli) -> None:
    empty_run = tmp_path / "runs" / "never"
    (empty_run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UsageError, match="no trained model") as info:
        export_hf(empty_run, tmp_path / "o")
    assert "llmkit train" in str(info.value)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    out = cli("export", str(runs["llama"]), "--out", str(busy))
    assert out.returncode == 2 and "not empty" in out.stderr and (busy / "keep.txt").read_text() == "mine"
    out = cli("export", str(runs["gpt2"]), "--format", "gguf", "--out", str(tmp_path / "g.gguf"), "--quant", "q9_9")
    assert out.returncode == 2 and "q4_k_m" in out.stderr  # the choices are listed
    other = tmp_path / "olmo"
    shutil.copytree(runs["llama"] / "final", other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "olmo2"}))
    with pytest.raises(UsageError, match="does not support the olmo2 architecture") as refused:
        export_gguf(other, tmp_path / "o.gguf")
    assert "gemma3_text" in str(refused.value) and "export --format hf" in str(refused.value)


@pytest.mark.parametrize("quant", ["f32", "f16", "bf16", "q8_0"])
def test_gguf_reads_back(runs: dict[str, Path], tmp_path: Path, quant: str) -> None:
    gguf = pytest.importorskip("gguf")
    from safetensors.numpy import load_file

    final = runs["llama"] / "final"
    path = export_gguf(final, tmp_path / "new" / "folder" / "m.gguf", quant)  # its folder made, as --format hf's
    reader = gguf.GGUFReader(str(path))
    cfg = json.loads((final / "config.json").read_text())
    field = lambda key: reader.fields[key].parts[-1][0]  # noqa: E731
    assert field("llama.block_count") == cfg["num_hidden_layers"]
    assert field("llama.attention.head_count_kv") == 1
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 512
    weights = load_file(str(final / "model.safetensors"))
    tensors = {t.name: t for t in reader.tensors}
    names = tensor_names(cfg["num_hidden_layers"], tied=True)
    assert set(tensors) == set(names.values())
    if quant == "f32":
        for hf, gg in names.items():
            data = np.asarray(tensors[gg].data).reshape(weights[hf].shape)
            if "q_proj" in hf:
                data = unpermute_rotary(data, cfg["num_attention_heads"])
            elif "k_proj" in hf:
                data = unpermute_rotary(data, 1)
            assert np.array_equal(data, weights[hf]), hf


@pytest.mark.llamacpp
def test_gguf_runs_in_llama_cpp_with_the_same_greedy_tokens(runs: dict[str, Path], tmp_path: Path, llama_cpp) -> None:  # type: ignore[no-untyped-def]
    from llmkit.generate.decode import generate
    from llmkit.generate.sampling import SamplingParams
    from llmkit.model.load import load_for_inference

    path = export_gguf(runs["llama"] / "final", tmp_path / "m.gguf", "f32")
    model, tok, _ = load_for_inference(runs["llama"], device="cpu")
    prompt = tok.encode("The for statement", add_special_tokens=False)
    ours = generate(model, tok, [prompt], [SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)])[0]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=32, verbose=False, logits_all=False)
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1):
        theirs.append(token)
        if len(theirs) == 8:
            break
    assert theirs == ours.token_ids


def test_verify_against_a_running_endpoint(runs: dict[str, Path], tmp_path: Path) -> None:
    from .serving.conftest import start_server, stop_server

    server = start_server(runs["lora"])
    try:
        report = verify(runs["lora"], runs["lora"] / "final", endpoint=server.url)
        assert report.ok and all(c.endpoint_equal for c in report.checks)
    finally:
        stop_server(server)


def test_bf16_decode_is_recorded_by_verify_and_served_as_recorded(runs: dict[str, Path], cli) -> None:
    """`verify --bf16` records the bf16 model against fp32; `serve --dtype bf16` decodes exactly as
    llmkit's own generate does on that bf16 model."""
    import httpx

    from llmkit.generate.decode import generate
    from llmkit.generate.sampling import SamplingParams
    from llmkit.model.load import load_for_inference

    from .serving.conftest import start_server, stop_server

    shown = cli("verify", str(runs["llama"]), "--bf16")
    assert shown.returncode == 0 and "bf16 decode vs fp32" in shown.stdout, shown.stdout + shown.stderr
    report = verify(runs["llama"], runs["llama"] / "final", bf16=True)
    b = report.bf16
    assert b is not None and b.prompts == len(report.checks) and 0 < b.max_logit_diff < 1.0
    assert 0 <= b.prompts_same <= b.prompts and 0 <= b.tokens_same <= b.tokens
    model, tok, _ = load_for_inference(runs["llama"], device="cpu", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    prompt = "The for statement"
    expected = generate(model, tok, [tok.encode(prompt, add_special_tokens=False)],
                        [SamplingParams(max_new_tokens=12, temperature=0)])[0].text
    server = start_server(runs["llama"], "--dtype", "bf16")
    try:
        r = httpx.post(server.url + "/v1/completions", timeout=60,
                       json={"model": runs["llama"].name, "prompt": prompt, "max_tokens": 12, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == expected
    finally:
        stop_server(server)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantized_serving_decodes_as_recorded_and_verify_measures_it(runs: dict[str, Path], dtype: str) -> None:
    """`serve --dtype int8|int4` decodes exactly as llmkit's generate on the model quantized the same
    way, says what it serves on /v1/models, and `verify --endpoint` judges it by its perplexity
    on the held-out text against fp32."""
    import httpx

    from llmkit.exporting.endpoint_check import ENDPOINT_PPL_LIMIT
    from llmkit.generate.decode import generate
    from llmkit.generate.sampling import SamplingParams
    from llmkit.model.load import load_for_inference

    from .serving.conftest import start_server, stop_server

    model, tok, _ = load_for_inference(runs["llama"], device="cpu", dtype=dtype)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    prompt = "The for statement"
    expected = generate(model, tok, [tok.encode(prompt, add_special_tokens=False)],
                        [SamplingParams(max_new_tokens=12, temperature=0)])[0].text
    server = start_server(runs["llama"], "--dtype", dtype)
    try:
        listed = httpx.get(server.url + "/v1/models", timeout=10).json()["data"]
        assert listed[0]["dtype"] == dtype
        r = httpx.post(server.url + "/v1/completions", timeout=60,
                       json={"model": runs["llama"].name, "prompt": prompt, "max_tokens": 12, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected, r.text
        report = verify(runs["llama"], runs["llama"] / "final", endpoint=server.url)
    finally:
        stop_server(server)
    e = report.endpoint
    assert e is not None and e.dtype == dtype and not e.exact and e.ratio is not None and e.tokens > 100
    limit = ENDPOINT_PPL_LIMIT[dtype]
    assert e.ok == (1 / limit <= e.ratio <= limit) and report.ok == (e.ok and all(c.greedy_equal for c in report.checks))
    shown = render(report)
    assert f"endpoint ({dtype}): perplexity" in shown and f"verdict: {'PASS' if report.ok else 'FAIL'}" in shown, shown
    print(shown)
    assert "serve.dtype" in server.proc.stderr.read()  # type: ignore[union-attr]
