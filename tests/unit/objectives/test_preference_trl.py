"""llmkit's preference losses against TRL's, on the same model and the same batch of pairs.

TRL is the oracle: its trainers compute the loss with their own forward, log-probability and loss
code; llmkit's ``Preference.loss`` must give the same value and the same gradients within 1e-5 in
fp32. Where each variant lives in the installed TRL (1.16):

- DPO (sigmoid) and IPO: ``trl.DPOTrainer`` (stable), loss types ``sigmoid`` and ``ipo``; with
  ``sft_weight`` (RPO) the loss types ``[sigmoid, sft]`` weighted ``[1, sft_weight]``.
- cDPO (label smoothing): TRL 1.16's DPO ``sigmoid`` no longer smooths; the smoothed sigmoid is
  ``trl.experimental.cpo.CPOTrainer.cpo_loss`` (loss type ``sigmoid``), fed the policy-minus-reference
  log-ratios that CPO's own ``concatenated_forward`` computes on the policy and on the reference.
- SimPO: ``trl.experimental.cpo.CPOTrainer`` with loss type ``simpo`` (``cpo_alpha`` = llmkit's
  ``sft_weight``, 0 and 0.5).
- ORPO: ``trl.experimental.orpo.ORPOTrainer``'s forward, log-probabilities and ``odds_ratio_loss``
  (its ``beta`` is ORPO's lambda, llmkit's ``orpo_alpha``); the SFT term on the answer tokens (TRL's
  trainer adds the prompt's tokens to it; llmkit never trains on prompts).
- KTO: ``trl.KTOTrainer`` (stable), with a frozen reference model.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from families import model_config, tokenizer  # noqa: E402

from llmkit.config.schema import PreferenceConfig  # noqa: E402
from llmkit.objectives.preference import Preference, Reference  # noqa: E402

P, T, PROMPT = 3, 14, 5  # pairs, tokens per row, prompt tokens


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    import transformers

    tok = tokenizer("qwen2.5", vocab=300)
    cfg = model_config("qwen2.5", tok)
    torch.manual_seed(0)
    policy = transformers.Qwen2ForCausalLM(cfg).float()
    ref = copy.deepcopy(policy)
    with torch.no_grad():  # a reference away from the policy, so the log-ratios are not zero
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, len(tok), (2 * P, T), generator=g)
    attention = torch.ones_like(ids)
    attention[1, -3:] = 0  # a short chosen answer (right padding)
    attention[P + 2, -5:] = 0  # a short rejected answer
    ids = ids.masked_fill(attention == 0, tok.pad_token_id)
    completion = torch.zeros_like(ids)
    completion[:, PROMPT:] = 1
    completion *= attention
    ids[P:, :PROMPT] = ids[:P, :PROMPT]  # a pair shares its prompt
    return {"tok": tok, "policy": policy, "ref": ref, "ids": ids, "attention": attention, "completion": completion}


def _llmkit(s: dict[str, Any], settings: PreferenceConfig, kl: dict[str, Any] | None = None,
            labels: Any = None, chunked: bool = False) -> tuple[float, dict[str, Any]]:
    """llmkit's loss and gradients on the batch (inputs are the rows without their last token)."""
    ids, attention, completion = s["ids"], s["attention"], s["completion"]
    batch = {"input_ids": ids[:, :-1], "attention_mask": attention[:, :-1],
             "labels": ids[:, 1:].masked_fill(completion[:, 1:] == 0, -100)}
    if kl is not None:
        batch.update(kl)
        batch["kto_label"] = labels
    objective = Preference(settings=settings, reference=Reference("copy", s["ref"]))
    s["policy"].zero_grad()
    loss = objective.loss(s["policy"], batch, chunked)[0]
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in s["policy"].named_parameters() if p.grad is not None}


def _trl_grads(s: dict[str, Any], loss: Any) -> tuple[float, dict[str, Any]]:
    s["policy"].zero_grad()
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in s["policy"].named_parameters() if p.grad is not None}


def _same(ours: tuple[float, dict[str, Any]], theirs: tuple[float, dict[str, Any]]) -> None:
    assert ours[0] == pytest.approx(theirs[0], abs=1e-5), (ours[0], theirs[0])
    assert ours[1].keys() == theirs[1].keys()
    worst = max(float((ours[1][n] - theirs[1][n]).abs().max()) for n in ours[1])
    assert worst < 1e-5, f"largest gradient difference {worst:.3g}"
    assert any(float(g.abs().max()) > 1e-4 for g in ours[1].values())  # a real gradient, not all zeros


def _dataset() -> Any:
    return datasets.Dataset.from_dict({"prompt": ["a b"], "chosen": ["c"], "rejected": ["d"]})


def _args(kind: Any, tmp: Path, **kw: Any) -> Any:
    return kind(output_dir=str(tmp), report_to=[], use_cpu=True, bf16=False, **kw)


@pytest.mark.parametrize("loss_type,ours,sft", [("sigmoid", "dpo", 0.0), ("ipo", "ipo", 0.0), ("sigmoid", "dpo", 0.7)])
def test_dpo_and_ipo_equal_trl_dpo_trainer(setup: dict[str, Any], tmp_path: Path, loss_type: str, ours: str,
                                           sft: float) -> None:
    """sft_weight: TRL's DPO loss types [sigmoid, sft] weighted [1, sft_weight] (RPO)."""
    s = setup
    types, weights = ([loss_type, "sft"], [1.0, sft]) if sft else ([loss_type], None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(model=s["policy"], ref_model=s["ref"], train_dataset=_dataset(),
                                 processing_class=s["tok"],
                                 args=_args(trl.DPOConfig, tmp_path, beta=0.3, loss_type=types, loss_weights=weights))
        inputs = {"input_ids": s["ids"], "attention_mask": s["attention"], "completion_mask": s["completion"]}
        theirs = _trl_grads(s, trainer._compute_loss(trainer.model, inputs, False))
    _same(_llmkit(s, PreferenceConfig(loss=ours, beta=0.3, sft_weight=sft)), theirs)
    # through the head in chunks of tokens (no whole logits), as the training loop runs it
    _same(_llmkit(s, PreferenceConfig(loss=ours, beta=0.3, sft_weight=sft), chunked=True), theirs)


def _cpo_batch(s: dict[str, Any]) -> dict[str, Any]:
    """The batch in CPO's and ORPO's format: chosen_* and rejected_*, labels -100 off the answers."""
    ids, attention, completion = s["ids"], s["attention"], s["completion"]
    labels = ids.masked_fill(completion == 0, -100)
    return {"chosen_input_ids": ids[:P], "chosen_attention_mask": attention[:P], "chosen_labels": labels[:P],
            "rejected_input_ids": ids[P:], "rejected_attention_mask": attention[P:], "rejected_labels": labels[P:]}


def _cpo(s: dict[str, Any], tmp: Path, **kw: Any) -> Any:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CPOTrainer(model=s["policy"], train_dataset=_dataset(), processing_class=s["tok"],
                          args=_args(CPOConfig, tmp, **kw))


def test_simpo_equals_trl_cpo_simpo(setup: dict[str, Any], tmp_path: Path) -> None:
    s = setup
    for sft in (0.0, 0.5):  # sft_weight: CPO's cpo_alpha (its NLL on the chosen answers)
        trainer = _cpo(s, tmp_path, loss_type="simpo", beta=2.0, simpo_gamma=0.7, cpo_alpha=sft, label_smoothing=0.1)
        theirs = _trl_grads(s, trainer.get_batch_loss_metrics(s["policy"], _cpo_batch(s))[0])
        ours = PreferenceConfig(loss="simpo", beta=2.0, simpo_gamma=0.7, label_smoothing=0.1, sft_weight=sft)
        _same(_llmkit(s, ours), theirs)


def test_conservative_dpo_equals_trl_smoothed_sigmoid(setup: dict[str, Any], tmp_path: Path) -> None:
    """cDPO: CPO's smoothed sigmoid loss on the log-ratios to the reference, all computed by TRL."""
    s = setup
    trainer = _cpo(s, tmp_path, loss_type="sigmoid", beta=0.3, cpo_alpha=0.0, label_smoothing=0.2)
    batch = _cpo_batch(s)
    chosen, rejected = trainer.concatenated_forward(s["policy"], batch)[:2]
    with torch.no_grad():
        ref_chosen, ref_rejected = trainer.concatenated_forward(s["ref"], batch)[:2]
    losses = trainer.cpo_loss(chosen - ref_chosen, rejected - ref_rejected)[0]
    _same(_llmkit(s, PreferenceConfig(loss="dpo", beta=0.3, label_smoothing=0.2)), _trl_grads(s, losses.mean()))


def test_orpo_equals_trl_orpo(setup: dict[str, Any], tmp_path: Path) -> None:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    s = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = ORPOTrainer(model=s["policy"], train_dataset=_dataset(), processing_class=s["tok"],
                              args=_args(ORPOConfig, tmp_path, beta=0.25))
        batch = _cpo_batch(s)
        chosen, rejected, chosen_logits = trainer.concatenated_forward(s["policy"], batch)[:3]
        odds_ratio = trainer.odds_ratio_loss(chosen, rejected)[0]
    # llmkit's SFT term is on the chosen answer's tokens, as everything llmkit trains on; TRL's
    # ORPOTrainer takes it over the prompt too (its get_batch_loss_metrics): the odds-ratio term
    # and every log-probability here are TRL's, the NLL the standard one over the answer tokens
    nll = torch.nn.functional.cross_entropy(chosen_logits.reshape(-1, chosen_logits.size(-1)),
                                            batch["chosen_labels"][:, 1:].reshape(-1), ignore_index=-100)
    _same(_llmkit(s, PreferenceConfig(loss="orpo", orpo_alpha=0.25)), _trl_grads(s, nll - odds_ratio.mean()))


def test_kto_equals_trl_kto_trainer(setup: dict[str, Any], tmp_path: Path) -> None:
    """Unpaired answers (the six rows, labels mixed) with mismatched KL rows (each prompt with the
    previous row's answer, as llmkit's batches and TRL's dataset make them)."""
    s = setup
    ids, attention, completion = s["ids"], s["attention"], s["completion"]
    kl_ids = torch.cat([ids[:, :PROMPT], ids.roll(1, 0)[:, PROMPT:]], 1)
    kl_attention = torch.cat([attention[:, :PROMPT], attention.roll(1, 0)[:, PROMPT:]], 1)
    kl_completion = torch.cat([completion[:, :PROMPT], completion.roll(1, 0)[:, PROMPT:]], 1)
    labels = torch.tensor([1, 0, 1, 1, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = datasets.Dataset.from_dict({"prompt": ["a b", "c d"], "completion": ["e", "f"], "label": [True, False]})
        trainer = trl.KTOTrainer(model=s["policy"], ref_model=s["ref"], train_dataset=data, processing_class=s["tok"],
                                 args=_args(trl.KTOConfig, tmp_path, beta=0.2, desirable_weight=1.3,
                                            undesirable_weight=0.8, per_device_train_batch_size=6))
        inputs = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion, "label": labels.bool(),
                  "KL_input_ids": kl_ids, "KL_attention_mask": kl_attention, "KL_completion_mask": kl_completion}
        theirs = _trl_grads(s, trainer._compute_loss(trainer.model, inputs, False))
    kl = {"kl_input_ids": kl_ids[:, :-1], "kl_attention_mask": kl_attention[:, :-1],
          "kl_labels": kl_ids[:, 1:].masked_fill(kl_completion[:, 1:] == 0, -100)}
    settings = PreferenceConfig(loss="kto", beta=0.2, kto_desirable_weight=1.3, kto_undesirable_weight=0.8)
    ids_all = {"ids": ids, "attention": attention, "completion": completion}
    _same(_llmkit({**s, **ids_all}, settings, kl, labels), theirs)
    _same(_llmkit({**s, **ids_all}, settings, kl, labels, chunked=True), theirs)
