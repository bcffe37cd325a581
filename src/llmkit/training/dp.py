"""Differentially private fine-tuning (``privacy.dp``): DP-SGD with Opacus.

Each step draws a Poisson sample of the training examples (each one independently with
probability q = train.global_batch_size / N, from a generator seeded by the run's seed and the
step, so a resumed run draws the same batches), splits it into micro-batches, and computes
per-example gradients (Opacus ``GradSampleModule``) of each example's own loss (its mean over
its labelled tokens, or its cross-entropy for classification). Opacus's ``DPOptimizer`` clips
every example's gradient to ``max_grad_norm``, sums them over the micro-batches, adds Gaussian
noise of standard deviation ``noise_multiplier x max_grad_norm`` once per step, and divides by
the expected batch size; its RDP accountant records (noise, q) per step. The accountant's
history goes into every checkpoint, so a resumed run continues the accounting exactly.

Refused, because the guarantee would not hold or Opacus cannot compute it: pretraining (windows
cut across documents), SFT packing (several examples in one row), several processes, bf16/fp16,
torch.compile, and layers whose per-example gradients are not separable (found with a probe
backward pass before step 1; e.g. GPT-2's learned position embedding sees the batch as one).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmkit.config.schema import RunConfig
from llmkit.errors import ConfigError


@dataclass
class DpSetup:
    noise_multiplier: float
    sample_rate: float
    delta: float
    examples: int


def check_supported(cfg: RunConfig, distributed: bool, precision: str) -> None:
    """Refuse what DP-SGD here cannot do correctly (before any work)."""
    if distributed:
        raise ConfigError("privacy.dp runs in one process", "per-example clipping and the accountant here cover "
                          "one device; several processes would each add noise to their own share",
                          "train on one device (no torchrun / launch with one process)")
    if precision != "fp32":
        raise ConfigError(f"privacy.dp trains in fp32, but the run resolved train.precision to {precision}",
                          "per-example gradients under autocast are not supported here",
                          "set train.precision: fp32")


def setup(cfg: RunConfig, examples: int, steps: int | None) -> DpSetup:
    """The noise multiplier (given, or the smallest that keeps ``steps`` within target_epsilon) and q."""
    dp = cfg.privacy.dp
    q = cfg.train.global_batch_size / examples
    if q >= 1:
        raise ConfigError(f"privacy.dp: train.global_batch_size {cfg.train.global_batch_size} is not smaller than "
                          f"the {examples} training examples",
                          "DP-SGD's guarantee comes from sampling a small share of the examples each step",
                          "lower train.global_batch_size (or add examples)")
    delta = dp.delta if dp.delta is not None else 1.0 / (10 * examples)
    if dp.noise_multiplier is not None:
        sigma = dp.noise_multiplier
    else:
        from opacus.accountants.utils import get_noise_multiplier

        if dp.target_epsilon is None or steps is None:  # the config validator refuses both already
            raise ConfigError("privacy.dp needs noise_multiplier, or target_epsilon with train.max_steps",
                              "the noise is computed for a privacy budget over a known number of steps",
                              "set privacy.dp.noise_multiplier, or target_epsilon and train.max_steps")
        sigma = float(get_noise_multiplier(target_epsilon=dp.target_epsilon, target_delta=delta, sample_rate=q,
                                           steps=steps, accountant="rdp"))
    return DpSetup(sigma, q, delta, examples)


@contextlib.contextmanager
def _quiet_hooks() -> Iterator[None]:
    """Opacus's full backward hooks warn, harmlessly, that the input ids need no gradient."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


class DpTrainer:
    """Per-example gradients, clipping, noise and accounting around the run's model and AdamW."""

    def __init__(self, cfg: RunConfig, model: Any, optimizer: Any, data: Any, micro: int, steps: int | None,
                 objective: Any, log: Any) -> None:
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        model.train()
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise ConfigError("privacy.dp: the model has layers Opacus cannot train privately",
                              "; ".join(str(p) for p in problems)[:500], "use a llama-architecture model")
        self.cfg, self.data, self.micro, self.objective = cfg, data, micro, objective
        self.examples = len(data.train)
        self.setup = setup(cfg, self.examples, steps)
        import torch

        self.module = GradSampleModule(model, batch_first=True, loss_reduction="sum")
        # the noise of step s comes from its own generator seeded by (a secret random seed, s): a
        # resumed run adds the same noise, whatever else drew random numbers in between; the seed
        # is not the config's (anyone could then subtract the noise) and lives in the checkpoints
        self.noise_seed = int.from_bytes(os.urandom(8), "little") >> 1
        self.generator = torch.Generator(device=next(model.parameters()).device)
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.setup.noise_multiplier,
                                     max_grad_norm=cfg.privacy.dp.max_grad_norm,
                                     expected_batch_size=cfg.train.global_batch_size, loss_reduction="mean",
                                     generator=self.generator)
        self.accountant = RDPAccountant()
        account = self.accountant.get_optimizer_hook_fn(sample_rate=self.setup.sample_rate)
        self.last_grad_norm = 0.0

        clip = cfg.train.grad_clip_norm

        def hook(opt: Any) -> None:  # after clipping, noise and averaging; before AdamW's update
            account(opt)
            # train.grad_clip_norm on the released (noised) gradient: post-processing keeps the guarantee
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(opt.params, clip or float("inf")))

        self.optimizer.attach_step_hook(hook)
        self._probe(model)
        log(f"privacy.dp: DP-SGD over {self.examples} examples, q = {self.setup.sample_rate:.4g}, noise multiplier "
            f"{self.setup.noise_multiplier:.4g}, clip {cfg.privacy.dp.max_grad_norm}, delta {self.setup.delta:.3g}")

    def _probe(self, model: Any) -> None:
        """A backward pass on two examples: every trainable parameter must get one gradient per example."""
        import torch

        batch = self._collate([0, 1])
        with _quiet_hooks():
            self.objective.example_losses(self.module, batch).sum().backward()
        shared = [n for n, p in model.named_parameters()
                  if p.requires_grad and (getattr(p, "grad_sample", None) is None or p.grad_sample.shape[0] != 2)]
        for p in model.parameters():
            p.grad_sample = None
            p.grad = None
        if shared:
            raise ConfigError("privacy.dp: per-example gradients of some parameters cannot be separated",
                              f"{', '.join(shared[:5])} see the batch as one (e.g. GPT-2's learned position "
                              "embedding), so their gradients cannot be clipped per example",
                              "use a llama-architecture model, or LoRA (the base stays frozen)")
        del torch

    def _collate(self, indices: list[int]) -> dict[str, Any]:
        import torch

        device = next(self.module.parameters()).device
        return {k: torch.from_numpy(v).to(device) for k, v in self.data.collate_train(indices).items()}

    def sample(self, step: int) -> list[int]:
        """The Poisson batch of ``step`` (1-based): the same for the same seed and step."""
        rng = np.random.default_rng([self.cfg.train.seed, step, 0x5D9])
        return np.flatnonzero(rng.random(self.examples) < self.setup.sample_rate).tolist()

    def accumulate(self, step: int) -> tuple[float, int, int]:
        """Forward and backward over the step's Poisson batch in micro-batches (clipped per example as
        it goes; noise and the update come with ``optimizer.step()``). Returns (mean example loss,
        tokens, examples)."""
        import torch

        chosen = self.sample(step)
        self.generator.manual_seed((self.noise_seed + step * 0x9E3779B97F4A7C15) % (1 << 63))
        chunks = [chosen[i : i + self.micro] for i in range(0, len(chosen), self.micro)]
        loss_sum, tokens = 0.0, 0
        for i, chunk in enumerate(chunks):
            batch = self._collate(chunk)
            with _quiet_hooks():
                losses = self.objective.example_losses(self.module, batch)
                losses.sum().backward()
            loss_sum += float(losses.detach().sum())
            tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
            if i < len(chunks) - 1:  # clip and add up; noise and the update only after the last micro-batch
                self.optimizer.signal_skip_step(do_skip=True)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        if not chunks:  # an empty Poisson sample: the step still adds noise (and counts)
            for p in self.optimizer.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        return loss_sum / max(len(chosen), 1), tokens, len(chosen)

    def epsilon(self) -> float:
        """Epsilon spent so far (at the run's delta)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.setup.delta))

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.accountant.history], "noise_seed": self.noise_seed,
                "noise_multiplier": self.setup.noise_multiplier,
                "sample_rate": self.setup.sample_rate, "delta": self.setup.delta, "epsilon": self.epsilon()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        # the steps already taken, with the noise and sampling rate they had: a resume that changes
        # either (another max_steps under target_epsilon) adds a new entry, and epsilon stays exact
        self.accountant.history = [tuple(h) for h in state["history"]]
        self.noise_seed = int(state["noise_seed"])

    def discard(self) -> None:
        """Drop this step's gradients (a non-finite loss): nothing is released, nothing is counted."""
        for p in self.optimizer.params:
            p.grad_sample = None
            p.summed_grad = None
            p.grad = None
        self.optimizer._step_skip_queue.clear()
        self.optimizer._is_last_step_skipped = False
