"""``train.compile``: ``torch.compile`` of the model for the training step, decided and guarded.

- ``false``: eager.
- ``true``: compile before step 1 with a dry run (forward and backward of the first validation
  batch, gradients thrown away: no training data is consumed, no update made). If compiling fails
  (no C++ compiler, an unsupported op, a backend error), one warning and the run goes on eager.
- ``auto``: the dry run is timed eagerly first. When the planned remaining steps could not repay a
  typical compile (``expected_compile_s``: 15 eager steps, at least 30 s, as measured on this
  project's CPUs) the run stays eager; otherwise it compiles, times the compiled dry run, and keeps
  the compiled model only if it is at least 3% faster per step. Every decision is logged with the
  figures it was made on.

The compiled module (``torch.compile``'s wrapper) shares the parameters of the model; checkpoints,
evaluation and final/ use the model itself, so nothing saved depends on the compile.
Compiled and eager losses agree to float rounding (``tests/integration/train/test_compile.py``
states the tolerance), not bit for bit, and the compile happens again on a resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from llmkit.faults import fault_point

MIN_SPEEDUP = 0.97  # compiled step time / eager step time must be at most this to keep it


def expected_compile_s(eager_step_s: float) -> float:
    """A compile's typical cost before it is measured: 15 eager steps, at least 30 s."""
    return max(30.0, 15.0 * eager_step_s)


@dataclass
class Decision:
    compiled: bool
    why: str


def worth_trying(eager_step_s: float, remaining_steps: int | None) -> Decision:
    """Whether ``auto`` should compile at all: only when the run is long enough to repay a compile."""
    if remaining_steps is None:
        return Decision(True, "the run has no step budget (time or tokens): long enough to try")
    budget = expected_compile_s(eager_step_s)
    if remaining_steps * eager_step_s < budget * 4:
        return Decision(False, f"{remaining_steps} steps of {eager_step_s:.3g} s could not repay a compile "
                               f"(about {budget:.0f} s)")
    return Decision(True, f"{remaining_steps} steps of {eager_step_s:.3g} s")


def keep(eager_step_s: float, compiled_step_s: float) -> Decision:
    """Whether the compiled model is fast enough to keep."""
    ratio = compiled_step_s / eager_step_s
    if ratio <= MIN_SPEEDUP:
        return Decision(True, f"compiled step {compiled_step_s:.3g} s vs eager {eager_step_s:.3g} s ({1 / ratio:.2f}x)")
    return Decision(False, f"compiled step {compiled_step_s:.3g} s vs eager {eager_step_s:.3g} s: no gain "
                           f"({1 / ratio:.2f}x)")


def _dry_run(model: Any, batch: dict[str, Any], loss: Callable[[Any, dict[str, Any]], Any]) -> float:
    """One forward and backward on ``batch``; gradients cleared; returns seconds."""
    t0 = time.perf_counter()
    loss(model, batch).backward()
    for p in model.parameters():
        p.grad = None
    return time.perf_counter() - t0


def prepare(mode: bool | str, model: Any, batch: dict[str, Any], loss: Callable[[Any, dict[str, Any]], Any],
            remaining_steps: int | None, accum: int, log: Callable[[str], None]) -> Any:
    """The module the training step should call: ``model`` itself or its compiled wrapper."""
    if mode is False:
        return model
    import torch

    eager_s = 0.0
    if mode == "auto":
        _dry_run(model, batch, loss)  # warm-up (allocator, kernels)
        eager_s = min(_dry_run(model, batch, loss) for _ in range(2)) * accum
        trial = worth_trying(eager_s, remaining_steps)
        if not trial.compiled:
            log(f"compile: auto -> eager ({trial.why})")
            return model
    try:
        compiled = torch.compile(model)
        fault_point("compile")
        t0 = time.perf_counter()
        _dry_run(compiled, batch, loss)
        compile_s = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 (any backend failure: the run goes on eager)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        log(f"warning: torch.compile failed ({type(exc).__name__}: {first}); training eager")
        torch._dynamo.reset()
        return model
    if mode == "auto":
        compiled_s = min(_dry_run(compiled, batch, loss) for _ in range(2)) * accum
        verdict = keep(eager_s, compiled_s)
        log(f"compile: auto -> {'compiled' if verdict.compiled else 'eager'} ({verdict.why}; compiling took "
            f"{compile_s:.0f} s)")
        return compiled if verdict.compiled else model
    log(f"compile: model compiled in {compile_s:.0f} s")
    return compiled
