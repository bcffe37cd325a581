"""The open model families end to end, each a tiny random model of its transformers class with a
tokenizer carrying the family's special tokens and chat template (tests/families.py):

- fast tier, in process: prepare with the model's own tokenizer and template, LoRA on its NF4
  base, the merged final/ exported and checked in plain transformers (``llmkit verify``: prompt
  tokens, logits, greedy tokens through each one's own decode loop);
- ``slow``, through the CLI: LoRA on a bf16 base, eval, export (hf; gguf for the llama
  architecture, a refusal naming the architecture for the others), serve answering a chat
  request through the ``openai`` client, verify against the endpoint;
- ``llamacpp``: the GGUF of each llama-architecture family run in llama.cpp by ``verify --gguf``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.families import FAMILIES, GGUF_FAMILIES, make_family

pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

# the projections LoRA must find in each family's blocks (Phi-3 fuses q/k/v and gate/up)
PROJECTIONS = {"phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}}
LLAMA_LIKE = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def family_run(root: Path, family: str, bits: int, steps: int = 3, sentencepiece: bool = False) -> Path:
    import yaml

    base = make_family(family, root / "base", sentencepiece=sentencepiece)
    rows = [{"prompt": f"What is {i} plus one?", "completion": f"{i} plus one is {i + 1}."} for i in range(60)]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"name": family.replace(".", ""), "runs_root": str(root / "runs"),
           "model": {"from_pretrained": str(base), "lora": {"enabled": True, "r": 8, "base_bits": bits}},
           "tokenizer": {"kind": "pretrained"},
           "data": {"sft_path": str(root / "sft.jsonl"), "val_fraction": 0.1},
           "train": {"task": "sft", "sequence_length_tokens": 64, "global_batch_size": 4, "micro_batch_size": 4,
                     "max_steps": steps, "eval_every_steps": steps, "eval_batches": 2, "learning_rate": 0.01,
                     "warmup_steps": 1, "device": "cpu", "precision": "fp32"},
           "eval": {"sample_prompts": ["What is 7 plus one?", "Hello"]},
           "serve": {"pack_weights": False}}
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_qlora_exports_what_transformers_runs(tmp_path: Path, family: str) -> None:
    from llmkit.config.load import load_config
    from llmkit.data.prepare import prepare
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.exporting.entry import export, verify_export
    from llmkit.training.loop import train

    cfg = load_config(family_run(tmp_path, family, 4), environ={})
    prepare(cfg)
    tok = load_tokenizer(tmp_path / "runs" / cfg.name / "tokenizer")
    assert tok.chat_template == FAMILIES[family]["template"]  # the model's own template, not llmkit's ChatML
    logs: list[str] = []
    result = train(cfg, log=logs.append)
    adapter = json.loads((result.run_dir / "final" / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == PROJECTIONS.get(family, LLAMA_LIKE)
    assert any("NF4 base" in line for line in logs) and any("merged the adapters" in line for line in logs)
    out = tmp_path / "hf"
    export(result.run_dir, out, "hf")
    report, _words = verify_export(result.run_dir, out)
    assert report.ok, report
    assert report.merge is not None and report.merge.base_bits == 4 and report.merge.max_logit_diff < 0.05


# Through the CLI, one family per code path (CI time): llmkit's decode step (Llama 3), transformers'
# forward (Gemma 2 with its soft-capping), fused projections (Phi-3). Qwen 2.5/3, Mistral and Gemma 3
# take the same paths (Qwen 3's query/key norms in llmkit's step are checked against transformers
# in the fast tier); every family runs in process in the fast tier and in llama.cpp (llamacpp tier).
CLI_FAMILIES = ("llama3", "gemma2", "phi3")


@pytest.mark.slow
@pytest.mark.parametrize("family", CLI_FAMILIES)
def test_family_end_to_end_through_the_cli(tmp_path: Path, family: str, cli) -> None:  # type: ignore[no-untyped-def]
    from openai import OpenAI

    from tests.integration.serving.conftest import start_server, stop_server

    config = family_run(tmp_path, family, 16, steps=4)
    name = family.replace(".", "")
    for args in (["prepare", "--config", str(config)], ["train", "--config", str(config)]):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert "a bf16 base" in done.stderr + done.stdout
    run = tmp_path / "runs" / name
    evaluated = cli("eval", str(run), "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["metrics"]["val_ppl"] > 1
    exported = cli("export", str(run), "--format", "hf", "--out", str(tmp_path / "hf"), cwd=tmp_path)
    assert exported.returncode == 0 and "verdict: PASS" in exported.stdout, exported.stdout + exported.stderr
    gguf = cli("export", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf"), cwd=tmp_path)
    assert gguf.returncode == 0 and family in GGUF_FAMILIES, gguf.stderr
    server = start_server(run)
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="none")
        reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "What is 7 plus one?"}],
                                               max_tokens=8, temperature=0)
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
        checked = cli("verify", str(run), "--exported", str(tmp_path / "hf"), "--endpoint", server.url,
                      "--endpoint-model", name, cwd=tmp_path)
        assert checked.returncode == 0 and "verdict: PASS" in checked.stdout, checked.stdout + checked.stderr
    finally:
        stop_server(server)
    fast = family in ("llama3", "qwen2.5", "qwen3", "mistral")  # llmkit's decode step; the others fall back
    log = server.proc.stderr.read()  # type: ignore[union-attr]
    assert ("decoding through transformers' forward" in log) != fast, log[-2000:]


@pytest.mark.llamacpp
@pytest.mark.parametrize("family", ["qwen2.5", "gemma3"])  # every architecture in process: test_gguf_families
def test_family_gguf_runs_in_llama_cpp(tmp_path: Path, family: str, cli, llama_cpp) -> None:  # type: ignore[no-untyped-def]
    config = family_run(tmp_path, family, 32, steps=3)
    for args in (["prepare", "--config", str(config)], ["train", "--config", str(config)]):
        assert cli(*args, cwd=tmp_path).returncode == 0
    run = tmp_path / "runs" / family.replace(".", "")
    for quant in ("f32", "q4_k_m"):
        out = tmp_path / f"m.{quant}.gguf"
        made = cli("export", str(run), "--format", "gguf", "--quant", quant, "--out", str(out), cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        checked = cli("verify", str(run), "--gguf", str(out), cwd=tmp_path)
        assert checked.returncode == 0 and f"GGUF ({quant}) in llama.cpp: tokenization same" in checked.stdout, checked.stdout
        assert "verdict: PASS" in checked.stdout and "held-out tokens: ratio" in checked.stdout, checked.stdout
