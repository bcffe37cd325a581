"""Packed SFT rows keep examples apart: each example's loss in a packed row equals its loss alone,
for every attention layout llmkit fine-tunes (full attention; Gemma's sliding-window layers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmkit.data.sft import IGNORE_INDEX, collate_packed, collate_padded
from llmkit.objectives.lm import OBJECTIVE as LM
from llmkit.objectives.packed import model_inputs

SHAPE = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def model(kind: str):  # type: ignore[no-untyped-def]
    import transformers

    cls, config = {"llama": ("LlamaForCausalLM", "LlamaConfig"), "qwen3": ("Qwen3ForCausalLM", "Qwen3Config"),
                   "phi3": ("Phi3ForCausalLM", "Phi3Config"), "gemma2": ("Gemma2ForCausalLM", "Gemma2Config"),
                   "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig"), "gpt2": ("GPT2LMHeadModel", "GPT2Config")}[kind]
    extra: dict[str, object] = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if kind.startswith("gemma"):
        extra.update(head_dim=8, sliding_window=5)  # shorter than the examples: the window matters
    shape = (dict(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=64) if kind == "gpt2" else SHAPE)
    torch.manual_seed(0)
    return getattr(transformers, cls)(getattr(transformers, config)(**shape, **extra)).eval()


def examples() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    out = []
    for n in (9, 14, 6, 11):
        ids = rng.integers(3, 120, n)
        mask = np.zeros(n, dtype=np.uint8)
        mask[n // 2:] = 1  # the answer half is trained
        out.append((ids, mask))
    return out


def as_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in batch.items()}


@pytest.mark.parametrize("kind", ["llama", "qwen3", "phi3", "gemma2", "gemma3", "gpt2"])
def test_each_example_in_a_packed_row_has_its_loss_alone(kind: str) -> None:
    net = model(kind)
    parts = examples()
    packed = as_torch(collate_packed([parts[:3], parts[3:]], 64, 0))
    assert packed["position_ids"][0, :8].tolist() == list(range(8)) and packed["position_ids"][0, 8] == 0
    with torch.no_grad():
        logits = net(**model_inputs(net, packed)).logits
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), packed["labels"], reduction="none",
                                                      ignore_index=IGNORE_INDEX)
        for r, row in enumerate([parts[:3], parts[3:]]):
            for k, example in enumerate(row, start=1):
                alone = as_torch(collate_padded([example], 64, 0))
                loss, count, _ = LM.loss(net, alone)
                here = packed["segments"][r] == k
                mine = per_token[r][here & (packed["labels"][r] != IGNORE_INDEX)]
                assert len(mine) == count
                assert float(mine.mean()) == pytest.approx(float(loss), abs=1e-5)
        whole = per_token[packed["labels"] != IGNORE_INDEX].mean()
        for chunked in (False, True):  # the training loss, through the head in chunks or not
            assert float(LM.loss(net, packed, chunked)[0]) == pytest.approx(float(whole), abs=1e-5)


def test_no_label_crosses_into_the_next_example_and_padding_is_not_counted() -> None:
    parts = examples()
    packed = collate_packed([parts[:2]], 64, 0)
    first = len(parts[0][0]) - 1
    assert packed["labels"].shape[1] == first + len(parts[1][0]) - 1
    # the last input of example 1 is labelled with example 1's last token, never example 2's first
    assert packed["labels"][0, first - 1] == parts[0][0][-1]
    assert (packed["segments"][0] > 0).all()
    two_rows = collate_packed([parts[:1], parts[1:3]], 64, 0)
    assert (two_rows["segments"][0] == 0).sum() == two_rows["input_ids"].shape[1] - first
