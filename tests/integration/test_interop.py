"""What llmkit exports behaves the same in the other tools users load it into, tried in those
tools on raw text: transformers 4.x (a separate virtualenv) and 5.x, plain `generate()`, and
llama.cpp (llama-cpp-python) on the GGUF file, with `llmkit verify` running the same checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.config.load import load_config
from llmkit.exporting.gguf import export_gguf, modelfile_path
from llmkit.exporting.hf import export_hf
from llmkit.exporting.verify import SAMPLE_TEXTS, verify
from llmkit.training.loop import train

from .training.helpers import make_run

pytestmark = pytest.mark.slow  # transformers 4.x and llama.cpp in their own environments

REPO = Path(__file__).resolve().parents[2]
QUESTION = "q7"


@pytest.fixture(scope="module")
def sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama fine-tuned on chat pairs until it ends its turns with <|im_end|>."""
    root = tmp_path_factory.mktemp("interop")
    base = make_run(root, name="base",
                    model={"max_position_embeddings": 64}, train={"max_steps": 10, "eval_every_steps": 10})
    pre = train(load_config(base, environ={}), log=lambda _: None).run_dir / "final"
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"answer {i}"}) + "\n" for i in range(24)))
    cfg = make_run(root, name="chat", model={"from_pretrained": str(pre), "max_position_embeddings": 64},
                   tokenizer={"kind": "pretrained", "path": str(pre)},
                   data={"sft_path": str(data), "val_fraction": 0.1},
                   train={"task": "sft", "max_steps": 120, "eval_every_steps": 120, "learning_rate": 0.01,
                          "min_learning_rate": 0.001, "sequence_length_tokens": 32})
    return train(load_config(cfg, environ={}), log=lambda _: None).run_dir


def _llmkit_chat(run: Path, question: str) -> tuple[str, str, list[int]]:
    from llmkit.generate.decode import generate
    from llmkit.generate.sampling import SamplingParams
    from llmkit.model.load import load_for_inference

    model, tok, _ = load_for_inference(run, device="cpu")
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    out = generate(model, tok, [list(ids)], [SamplingParams(max_new_tokens=20, temperature=0)])[0]
    return out.text, out.finish_reason, list(ids)


def test_final_tokenizer_config_is_portable(sft: Path) -> None:
    cfg = json.loads((sft / "final" / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not {"is_local", "local_files_only", "backend"} & set(cfg) and "<|im_end|>" in cfg["additional_special_tokens"]
    gen = json.loads((sft / "final" / "generation_config.json").read_text())
    tok = json.loads((sft / "final" / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert gen["eos_token_id"] == [ids["<|endoftext|>"], ids["<|im_end|>"]]


def test_plain_transformers_generate_stops_at_end_of_turn(sft: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text, finish, ids = _llmkit_chat(sft, QUESTION)
    assert finish == "stop" and text.strip(), (text, finish)  # the SFT model ends its turn by itself
    out = export_hf(sft, tmp_path / "hf").out
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    gen = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
    assert gen[-1] == tok.convert_tokens_to_ids("<|im_end|>") and len(gen) < 20  # stopped at end of turn
    assert tok.decode(gen, skip_special_tokens=True) == text


def _tf4_python() -> str | None:
    found = os.environ.get("LLMKIT_TF4_PYTHON") or str(REPO / ".venv-tf4" / "bin" / "python")
    return found if Path(found).exists() else None


def test_transformers_4_loads_the_export_with_the_same_tokens_and_logits(sft: Path, tmp_path: Path) -> None:
    python = _tf4_python()
    if python is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide transformers<5 in .venv-tf4 (see .ci/run)")
        pytest.skip("no transformers<5 virtualenv (.venv-tf4 or LLMKIT_TF4_PYTHON)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_hf(sft, tmp_path / "hf").out
    script = (
        "import json, sys, torch, transformers\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "d, texts, q = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]\n"
        "tok = AutoTokenizer.from_pretrained(d, local_files_only=True)\n"
        "model = AutoModelForCausalLM.from_pretrained(d, local_files_only=True, torch_dtype=torch.float32).eval()\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': q}], add_generation_prompt=True)\n"
        "with torch.inference_mode():\n"
        "    logits = model(torch.tensor([ids])).logits[0].tolist()\n"
        "    gen = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()\n"
        "print(json.dumps({'version': transformers.__version__, 'encoded': [tok.encode(t, add_special_tokens=False)\n"
        "                  for t in texts], 'ids': ids, 'logits': logits, 'gen': gen}))\n")
    done = subprocess.run([python, "-c", script, str(out), json.dumps(SAMPLE_TEXTS), QUESTION], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    old = json.loads(done.stdout.strip().splitlines()[-1])
    assert old["version"].startswith("4.")
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    assert old["encoded"] == [tok.encode(t, add_special_tokens=False) for t in SAMPLE_TEXTS]
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    assert old["ids"] == list(ids)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0]
        gen = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
    worst = float((torch.tensor(old["logits"]) - logits).abs().max())
    print(f"\ntransformers {old['version']} vs 5.x on the export: largest logit difference {worst:.2e}")
    assert worst < 1e-5 and old["gen"] == gen


TOOL_CHAT = {"tools": [{"type": "function", "function": {"name": "lookup", "description": "Look up a topic.", "parameters": {
    "type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]}}}], "messages": [
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does `for` do?"},
    {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
        "name": "lookup", "arguments": {"topic": "for"}}}]},
    {"role": "tool", "content": "It iterates."}]}


def test_transformers_4_renders_tool_calls_as_5_does(sft: Path, tmp_path: Path) -> None:
    """llmkit's chat template with tools, tool calls and tool results: the export renders the same
    text in transformers 4.x as in 5.x (and as the server and SFT render it)."""
    python = _tf4_python()
    if python is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide transformers<5 in .venv-tf4 (see .ci/run)")
        pytest.skip("no transformers<5 virtualenv (.venv-tf4 or LLMKIT_TF4_PYTHON)")
    from transformers import AutoTokenizer

    out = export_hf(sft, tmp_path / "hf").out
    script = ("import json, sys\nfrom transformers import AutoTokenizer\n"
              "chat = json.loads(sys.argv[2])\n"
              "tok = AutoTokenizer.from_pretrained(sys.argv[1], local_files_only=True)\n"
              "print(json.dumps(tok.apply_chat_template(chat['messages'], tools=chat['tools'], tokenize=False, "
              "add_generation_prompt=True)))\n")
    done = subprocess.run([python, "-c", script, str(out), json.dumps(TOOL_CHAT)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    text = tok.apply_chat_template(TOOL_CHAT["messages"], tools=TOOL_CHAT["tools"], tokenize=False,
                                   add_generation_prompt=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == text
    assert '<tool_call>\n{"name": "lookup", "arguments": {"topic": "for"}}\n</tool_call>' in text
    assert "Be brief.\n\n# Tools" in text and "<tool_response>\nIt iterates.\n</tool_response>" in text


@pytest.fixture(scope="module")
def gguf_file(sft: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gguf(sft / "final", tmp_path_factory.mktemp("gguf") / "chat.gguf", "f32")


def test_gguf_metadata_and_modelfile(gguf_file: Path) -> None:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_file))

    def field(name: str) -> object:
        f = reader.fields[name]
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types[0].name == "STRING" else int(value[0])

    assert field("tokenizer.ggml.pre") == "gpt-2"  # llama.cpp's name for GPT-2's split
    assert "<|im_end|>" in str(field("tokenizer.chat_template"))
    assert isinstance(field("tokenizer.ggml.eot_token_id"), int)
    text = modelfile_path(gguf_file).read_text()
    assert f"FROM ./{gguf_file.name}" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "{{ .Content }}<|im_end|>" in text


@pytest.mark.llamacpp
def test_llama_cpp_tokenizes_and_chats_like_llmkit(sft: Path, gguf_file: Path, llama_cpp) -> None:  # type: ignore[no-untyped-def]
    from llmkit.model.load import load_for_inference

    _, tok, _ = load_for_inference(sft, device="cpu")
    vocab = llama_cpp.Llama(model_path=str(gguf_file), vocab_only=True, verbose=False)
    for text in SAMPLE_TEXTS:
        assert vocab.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text, add_special_tokens=False), text
    text, finish, _ = _llmkit_chat(sft, QUESTION)
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=64, verbose=False)
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": QUESTION}], temperature=0.0, top_k=1,
                                       max_tokens=20)
    assert reply["choices"][0]["finish_reason"] == "stop" and finish == "stop"
    assert reply["choices"][0]["message"]["content"] == text


@pytest.mark.llamacpp
def test_llmkit_verify_runs_the_gguf_in_llama_cpp(sft: Path, gguf_file: Path, tmp_path: Path, llama_cpp) -> None:  # type: ignore[no-untyped-def]
    report = verify(sft, sft / "final", gguf=gguf_file)
    assert report.ok and report.gguf is not None and report.gguf.tokenize_equal and report.gguf.greedy_equal, \
        (report.gguf, [c.detail for c in report.checks])
    out = subprocess.run([sys.executable, "-m", "llmkit", "verify", str(sft), "--gguf", str(gguf_file)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "GGUF (f32) in llama.cpp: tokenization same" in out.stdout, out.stdout + out.stderr


def _llama_dir(directory: Path, pre_tokenizer: object) -> Path:
    """A tiny random llama with a BPE tokenizer trained here around ``pre_tokenizer``."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*list(topics.values())[:150], *SAMPLE_TEXTS], trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    hf.save_pretrained(str(directory))
    cfg = LlamaConfig(vocab_size=len(hf), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64, eos_token_id=0,
                      bos_token_id=0, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(str(directory))
    return directory


@pytest.mark.llamacpp
def test_llama3_style_tokenizer_goes_to_gguf_as_llama_bpe(tmp_path: Path, llama_cpp) -> None:  # type: ignore[no-untyped-def]
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoTokenizer

    from llmkit.errors import UsageError
    from llmkit.exporting.gguf_vocab import LLAMA3_SPLIT

    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
    model_dir = _llama_dir(tmp_path / "l3", pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=False)]))
    out = export_gguf(model_dir, tmp_path / "l3.gguf", "f32")
    from gguf import GGUFReader

    pre = GGUFReader(str(out)).fields["tokenizer.ggml.pre"]
    assert bytes(pre.parts[pre.data[0]]).decode() == "llama-bpe"
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    vocab = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    for text in SAMPLE_TEXTS:
        assert vocab.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text, add_special_tokens=False), text
    # a pre-tokenizer llama.cpp has no name for is refused, not guessed
    odd = _llama_dir(tmp_path / "odd", pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                                  pre_tokenizers.ByteLevel(add_prefix_space=False)]))
    with pytest.raises(UsageError, match="llama.cpp has no pre-tokenizer known to match"):
        export_gguf(odd, tmp_path / "odd.gguf", "f32")
