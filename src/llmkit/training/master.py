"""``train.precision: bf16-weights``: the model computes in bf16 end to end; fp32 master weights.

Under bf16 autocast the weights stay fp32: every matmul casts its weight to bf16 for each
micro-batch, and everything that is not a matmul (norms, residual adds, activations) runs on
fp32 tensors. Here the model's parameters *are* bf16 (activations follow), and an fp32 copy of
each trainable parameter (the master) is what AdamW updates, with fp32 moments:

    backward (bf16 grads) -> grads to the masters (fp32) -> clip -> AdamW on the masters
    -> masters copied into the bf16 parameters (one cast per optimizer step, not per micro-batch)

Checkpoints and ``final/`` hold the fp32 masters, so a run resumes and exports exactly as in fp32;
only the forward/backward arithmetic is bf16 (``tests/integration/train/test_precision.py``
compares validation loss with an fp32 run). One process, full fine-tuning or pretraining: LoRA
(a frozen base would be rounded to bf16), DDP/FSDP (their gradient and checkpoint paths hold the
model's own parameters) and privacy.dp are refused by ``check_supported``.
"""

from __future__ import annotations

from typing import Any

from llmkit.errors import ConfigError

PRECISION = "bf16-weights"


def check_supported(lora: bool, distributed: bool, private: bool, device_type: str) -> None:
    """Refuse the combinations this path does not cover, with what to use instead."""
    why = ("LoRA (its frozen base would be held in bf16)" if lora else
           "several processes (DDP/FSDP keep the model's own parameters)" if distributed else
           "privacy.dp (Opacus clips the model's own per-example gradients)" if private else
           "an MPS device" if device_type == "mps" else None)
    if why:
        raise ConfigError(f"train.precision: {PRECISION} does not support {why} yet",
                          "bf16 weights with fp32 master copies are built for one process, full training",
                          "use train.precision: bf16 (autocast) or auto")


class MasterWeights:
    """fp32 masters of a model's trainable parameters, the model itself cast to bf16."""

    def __init__(self, model: Any):
        import torch

        self.names: list[str] = []
        self.params: list[Any] = []
        self.masters: list[Any] = []
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.names.append(name)
                self.params.append(p)
                self.masters.append(torch.nn.Parameter(p.detach().clone().float()))
        self._master_of = {id(p): m for p, m in zip(self.params, self.masters)}
        for p in model.parameters():  # parameters only: buffers (rotary frequencies) stay fp32
            p.data = p.data.to(torch.bfloat16)

    def groups(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The optimizer's parameter groups with each model parameter replaced by its master."""
        return [{**g, "params": [self._master_of[id(p)] for p in g["params"]]} for g in groups]

    def grads_to_masters(self) -> None:
        """Move the bf16 gradients of the backward pass onto the masters, in fp32."""
        for p, m in zip(self.params, self.masters):
            if p.grad is None:
                m.grad = None
                continue
            m.grad = p.grad.float()
            p.grad = None

    def masters_to_model(self) -> None:
        """After the optimizer step: the updated masters, rounded, into the bf16 parameters."""
        import torch

        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], [m.data for m in self.masters])

    def tensors(self) -> dict[str, Any]:
        """The fp32 masters by parameter name, on the CPU (what a checkpoint holds)."""
        return {n: m.detach().cpu().contiguous() for n, m in zip(self.names, self.masters)}

    def load(self, tensors: dict[str, Any]) -> None:
        """Set the masters (and through them the model) from checkpoint tensors."""
        import torch

        with torch.no_grad():
            for n, m in zip(self.names, self.masters):
                m.copy_(tensors[n].to(m.device))
        self.masters_to_model()

    def fp32_model(self, model: Any) -> Any:
        """``model`` with its parameters back in fp32, the trainable ones from the masters (for
        ``final/``; the run is over)."""
        import torch

        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.float()
            for p, m in zip(self.params, self.masters):
                p.data.copy_(m.data)
        return model


def measured_step(model: Any, optimizer: Any, masters: MasterWeights | None, clip_norm: float | None = 1.0) -> None:
    """After a backward pass: what the loop does to finish a step (gradients to the masters, clipping,
    AdamW, the masters back into the model), without its non-finite checks. For code that times or
    sizes a training step as the loop takes it (the quickstart's step budget, the benchmarks)."""
    import torch

    if masters is not None:
        masters.grads_to_masters()
    params = masters.masters if masters is not None else [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, clip_norm or float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if masters is not None:
        masters.masters_to_model()
