"""Tiny random-weight models of the open families llmkit fine-tunes, each with a locally trained
byte-level BPE tokenizer carrying that family's special tokens and a chat template in its format
(written here for the tests), saved as a Hugging Face directory as the Hub would give it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN25 = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
          "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
           "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
         "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3 = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

# family: (transformers config class, model class, special tokens: bos, eos, pad, others; template)
FAMILIES: dict[str, dict[str, Any]] = {
    "llama3": {"config": "LlamaConfig", "model": "LlamaForCausalLM", "bos": "<|begin_of_text|>",
               "eos": "<|end_of_text|>", "pad": "<|finetune_right_pad_id|>",
               "extra": ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"], "template": LLAMA3},
    "qwen2.5": {"config": "Qwen2Config", "model": "Qwen2ForCausalLM", "bos": None, "eos": "<|im_end|>",
                "pad": "<|endoftext|>", "extra": ["<|im_start|>"], "template": QWEN25},
    "qwen3": {"config": "Qwen3Config", "model": "Qwen3ForCausalLM", "bos": None, "eos": "<|im_end|>",
              "pad": "<|endoftext|>", "extra": ["<|im_start|>", "<think>", "</think>"], "template": CHATML},
    "mistral": {"config": "MistralConfig", "model": "MistralForCausalLM", "bos": "<s>", "eos": "</s>", "pad": "<unk>",
                "extra": ["[INST]", "[/INST]"], "template": MISTRAL},
    "gemma2": {"config": "Gemma2Config", "model": "Gemma2ForCausalLM", "bos": "<bos>", "eos": "<eos>",
               "pad": "<pad>", "extra": ["<start_of_turn>", "<end_of_turn>"], "template": GEMMA},
    "gemma3": {"config": "Gemma3TextConfig", "model": "Gemma3ForCausalLM", "bos": "<bos>", "eos": "<eos>",
               "pad": "<pad>", "extra": ["<start_of_turn>", "<end_of_turn>"], "template": GEMMA},
    "phi3": {"config": "Phi3Config", "model": "Phi3ForCausalLM", "bos": "<s>", "eos": "<|endoftext|>",
             "pad": "<unk>", "extra": ["</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"], "template": PHI3},
}
GGUF_FAMILIES = tuple(FAMILIES)  # llmkit writes GGUF for each of them (exporting.gguf_arch)


def tokenizer(family: str, vocab: int = 512) -> Any:
    """A byte-level BPE trained on llmkit's embedded documents, with ``family``'s special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmkit.config.schema import DataConfig
    from llmkit.data.corpus import iter_documents

    f = FAMILIES[family]
    specials = [t for t in (f["bos"], f["eos"], f["pad"], *f["extra"]) if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(iter_documents(DataConfig()), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=f["bos"], eos_token=f["eos"], pad_token=f["pad"],
                                   extra_special_tokens=f["extra"], chat_template=f["template"],
                                   clean_up_tokenization_spaces=False, model_max_length=256)


SENTENCEPIECE_FAMILIES = ("mistral", "gemma2", "gemma3", "phi3")  # their real tokenizers are SentencePiece's


def sentencepiece_tokenizer(family: str, vocab: int = 512, legacy: bool | None = None) -> Any:
    """A SentencePiece BPE with byte fallback, as the real Mistral (v0.1-v0.3), Gemma and Phi-3 tokenizers
    are: trained here on llmkit's embedded documents and converted by transformers from
    ``tokenizer.model``, as it converts a Hub repository's, with ``family``'s special tokens. Gemma's
    ids and pieces are Gemma's (pad 0, eos 1, bos 2, unk 3, no space before the text); the others'
    are Llama 2's (unk 0, bos 1, eos 2). ``legacy`` is transformers' switch for a space before the text
    after a special token too (None: its default)."""
    import io
    import json
    import tempfile

    import sentencepiece
    import transformers

    from llmkit.config.schema import DataConfig
    from llmkit.data.corpus import iter_documents

    f = FAMILIES[family]
    gemma = family.startswith("gemma")
    ids = (dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>")
           if gemma else dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1))
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter_documents(DataConfig()), model_writer=model, vocab_size=vocab, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=not gemma,
        minloglevel=2, **ids)
    config = {"tokenizer_class": "GemmaTokenizer" if gemma else "LlamaTokenizer", "bos_token": f["bos"],
              "eos_token": "<eos>" if gemma else "</s>", "unk_token": "<unk>"}
    if legacy is not None:
        config["legacy"] = legacy
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "tokenizer.model").write_bytes(model.getvalue())
        (Path(d) / "tokenizer_config.json").write_text(json.dumps(config))
        tok = transformers.AutoTokenizer.from_pretrained(d)
        tok.add_special_tokens({"eos_token": f["eos"], "pad_token": f["pad"], "additional_special_tokens": f["extra"]})
        tok.chat_template = f["template"]
        tok.model_max_length = 256
        with tempfile.TemporaryDirectory() as again:  # as saved: tokenizer.json, no path to the temporary model
            tok.save_pretrained(again)
            (Path(again) / "tokenizer.model").unlink(missing_ok=True)
            return transformers.AutoTokenizer.from_pretrained(again)


def model_config(family: str, tok: Any) -> Any:
    """A 2-layer, 64-wide config of ``family`` (grouped-query attention: 4 heads, 2 key/value heads)."""
    import transformers

    f = FAMILIES[family]
    ids = {"bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
           "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    common: dict[str, Any] = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                  tie_word_embeddings=family != "llama3", **ids)
    if family.startswith("gemma"):
        common.update(head_dim=16, query_pre_attn_scalar=16, sliding_window=32)
    if family == "gemma2":
        common.update(final_logit_softcapping=30.0, attn_logit_softcapping=50.0)
    if family == "mistral":
        common.update(sliding_window=None)
    return getattr(transformers, f["config"])(**common)


def make_family(family: str, out: Path, seed: int = 0, sentencepiece: bool = False) -> Path:
    """Write a tiny random ``family`` model with its tokenizer (byte-level BPE, or ``sentencepiece``'s
    kind) to ``out``; return ``out``."""
    import torch
    import transformers

    tok = sentencepiece_tokenizer(family) if sentencepiece else tokenizer(family)
    cfg = model_config(family, tok)
    torch.manual_seed(seed)
    return save_with_moved_norms(getattr(transformers, FAMILIES[family]["model"])(cfg), tok, out, "norm")


def save_with_moved_norms(model: Any, tok: Any, out: Path, marker: str) -> Path:
    """Move the parameters whose names hold ``marker`` (the norms) away from their initialisation,
    so a wrong norm shows in the logits; save the model and ``tok`` to ``out``."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if marker in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
