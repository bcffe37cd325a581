"""llmkit's GRPO loss against TRL's, on the same model and the same batch of rollouts.

TRL is the oracle: ``trl.GRPOTrainer._compute_loss`` (TRL 1.16) computes the per-token
log-probabilities with its own forward (its fused LM head at the sampling temperature), the
importance ratio, the clip, the k3 KL to the reference and the loss aggregation of ``grpo`` and
``dr_grpo``; llmkit's ``Rl.loss`` must give the same loss and gradients within 1e-5 in fp32, given
the same completions, advantages and old / reference log-probabilities. The advantages themselves
are checked against TRL's formula (group mean, Bessel-corrected group std + 1e-4).
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from families import model_config, tokenizer  # noqa: E402

from llmkit.config.schema import RlConfig  # noqa: E402
from llmkit.data.rollouts import collate_rows  # noqa: E402
from llmkit.objectives.rl import Reference, Rl, advantages  # noqa: E402

B, PROMPT, COMPLETION, TEMPERATURE = 6, 5, 9, 0.7


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    import transformers

    tok = tokenizer("qwen2.5", vocab=300)
    torch.manual_seed(0)
    policy = transformers.Qwen2ForCausalLM(model_config("qwen2.5", tok)).float()
    ref = copy.deepcopy(policy)
    with torch.no_grad():  # a reference away from the policy, so the KL is not zero
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(10, len(tok), (B, PROMPT), generator=g)
    completion_ids = torch.randint(10, len(tok), (B, COMPLETION), generator=g)
    completion_mask = torch.ones_like(completion_ids)
    for row, length in ((1, 4), (3, 7), (4, 1)):  # answers that ended early (right padding)
        completion_mask[row, length:] = 0
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tok.pad_token_id)
    adv = torch.tensor([1.2, -0.7, 0.3, -1.1, 0.9, -0.6])
    return {"tok": tok, "policy": policy, "ref": ref, "prompt_ids": prompt_ids, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": adv}


def _rows(s: dict[str, Any], old: Any = None) -> list[dict[str, Any]]:
    rows = []
    for i in range(B):
        n = int(s["completion_mask"][i].sum())
        rows.append({"ids": s["prompt_ids"][i].tolist() + s["completion_ids"][i, :n].tolist(), "prompt_len": PROMPT,
                     "advantage": float(s["advantages"][i]), "old": None if old is None else old[i, :n].tolist(),
                     "stats": {"reward": 0.0}})
    return rows


def _grads(model: Any, loss: Any) -> tuple[float, dict[str, Any]]:
    model.zero_grad()
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _trainer(s: dict[str, Any], tmp: Path, loss_type: str, epsilon: float) -> Any:
    from trl.trainer.utils import add_fused_lm_head

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.GRPOTrainer(
            model=s["policy"], reward_funcs=lambda completions, **_: [0.0] * len(completions),
            train_dataset=datasets.Dataset.from_dict({"prompt": ["a b"] * 4}), processing_class=s["tok"],
            args=trl.GRPOConfig(output_dir=str(tmp), report_to=[], use_cpu=True, bf16=False, beta=0.0,
                                loss_type=loss_type, epsilon=epsilon, temperature=TEMPERATURE,
                                max_completion_length=COMPLETION, num_generations=2,
                                per_device_train_batch_size=2))
    trainer.current_gradient_accumulation_steps = 1
    ref = copy.deepcopy(s["ref"])
    add_fused_lm_head(ref, temperature=TEMPERATURE)
    trainer.trl_ref = ref
    return trainer


def _trl_inputs(s: dict[str, Any], trainer: Any, old: Any, kl: bool) -> dict[str, Any]:
    inputs = {"prompt_ids": s["prompt_ids"], "prompt_mask": torch.ones_like(s["prompt_ids"]),
              "completion_ids": s["completion_ids"], "completion_mask": s["completion_mask"],
              "advantages": s["advantages"]}
    if old is not None:
        inputs["old_per_token_logps"] = old
    if kl:
        ids = torch.cat([s["prompt_ids"], s["completion_ids"]], 1)
        mask = torch.cat([torch.ones_like(s["prompt_ids"]), s["completion_mask"]], 1)
        with torch.no_grad():
            inputs["ref_per_token_logps"] = trainer._get_per_token_logps_and_entropies(trainer.trl_ref, ids, mask,
                                                                                       COMPLETION)[0]
    return inputs


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
@pytest.mark.parametrize("kl_beta", [0.0, 0.04])
@pytest.mark.parametrize("reused", [False, True])
def test_grpo_loss_equals_trl(setup: dict[str, Any], tmp_path: Path, loss_type: str, kl_beta: float,
                              reused: bool) -> None:
    """On-policy (old = current, ratio 1) and reused rollouts (old log-probabilities away from the
    current ones, so some ratios are clipped), with and without the KL term."""
    s = setup
    trainer = _trainer(s, tmp_path, loss_type, epsilon=0.2)
    trainer.beta = kl_beta  # set after construction: TRL would load a reference from the Hub itself
    old = None
    if reused:
        g = torch.Generator().manual_seed(2)
        ids = torch.cat([s["prompt_ids"], s["completion_ids"]], 1)
        mask = torch.cat([torch.ones_like(s["prompt_ids"]), s["completion_mask"]], 1)
        with torch.no_grad():
            current = trainer._get_per_token_logps_and_entropies(s["policy"], ids, mask, COMPLETION)[0]
        old = current + 0.3 * torch.randn(current.shape, generator=g)
    theirs = _grads(s["policy"], trainer._compute_loss(s["policy"], _trl_inputs(s, trainer, old, bool(kl_beta))))

    settings = RlConfig(loss=loss_type, clip_epsilon=0.2, kl_beta=kl_beta, temperature=TEMPERATURE,
                        max_new_tokens=COMPLETION, rewards=[{"function": "contains"}])
    objective = Rl(settings=settings, reference=Reference("copy", s["ref"]) if kl_beta else Reference())
    batch = {k: torch.from_numpy(v) for k, v in collate_rows(_rows(s, old), s["tok"].pad_token_id).items()}
    for chunked in (False, True):  # the whole logits, and the head in chunks of tokens as the loop runs it
        loss, n, out = objective.loss(s["policy"], batch, chunked)
        ours = _grads(s["policy"], loss)
        assert n == B
        assert ours[0] == pytest.approx(theirs[0], abs=1e-5), (chunked, ours[0], theirs[0])
        worst = max(float((ours[1][k] - theirs[1][k]).abs().max()) for k in ours[1])
        assert worst < 1e-5, f"largest gradient difference {worst:.3g} (chunked={chunked})"
        assert any(float(g.abs().max()) > 1e-4 for g in ours[1].values())
        if reused:
            assert float(out["clipped"]) > 0  # the case exercises the clip


def test_advantages_equal_trl_formula() -> None:
    """grpo: (r - group mean) / (group std + 1e-4), std Bessel-corrected (TRL's nanstd);
    dr_grpo: r - group mean; a group whose rewards are all equal is flagged (no signal)."""
    from trl.trainer.utils import nanstd

    rewards = np.array([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0, 0.25, 1.0, 0.0, 0.0])
    r = torch.tensor(rewards).view(-1, 4)
    mean = r.mean(1).repeat_interleave(4)
    std = nanstd(r, dim=1).repeat_interleave(4)
    theirs = (torch.tensor(rewards) - mean) / (std + 1e-4)
    ours, flat = advantages(rewards, 4, scale=True)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)
    np.testing.assert_allclose(advantages(rewards, 4, scale=False)[0], (torch.tensor(rewards) - mean).numpy(),
                               atol=1e-6)
    assert flat.tolist() == [False] * 4 + [True] * 4 + [False] * 4
