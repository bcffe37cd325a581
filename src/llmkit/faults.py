"""Fault injection for the reliability tests, driven by the ``LLMKIT_FAULT`` environment variable.

Unset (always, outside tests) every hook is a dictionary lookup that does nothing. Set, it
injects one fault so the tests can prove what a real crash would do:

- ``save:kill@N``   SIGKILL this process at the N-th checkpoint-save fault point (1-based);
- ``save:enospc@N`` raise ``OSError(ENOSPC)`` there (disk full);
- ``save:sleep=S``  sleep S seconds at every save fault point (to kill from outside mid-save);
- ``loss:nan@K``    make the loss of optimizer step K (1-based) NaN;
- ``step:sleep=S``  sleep S seconds inside every optimizer step (to signal from outside mid-step);
- ``engine:raise@N`` raise RuntimeError at the server engine's N-th decode step;
- ``engine:sleep=S`` sleep S seconds at every engine decode step (to keep requests in flight);
- ``sample:raise_seed=S`` raise RuntimeError while choosing the third token of a sequence sampled
  with seed S (one request failing inside a shared batch, mid-stream).

Under torchrun a fault fires only in the workers' first attempt (a restarted group runs clean),
and, with ``LLMKIT_FAULT_RANK=R``, only on global rank R.
"""

from __future__ import annotations

import errno
import os
import signal
import time

_spec = os.environ.get("LLMKIT_FAULT", "")
if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" or \
        os.environ.get("LLMKIT_FAULT_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
    _spec = ""
_site, _, _rule = _spec.partition(":")
_hits: dict[str, int] = {}


def fault_point(site: str) -> None:
    """Mark a point where a fault may be injected (no-op unless LLMKIT_FAULT names ``site``)."""
    if site != _site:
        return
    _hits[site] = _hits.get(site, 0) + 1
    if _rule.startswith("sleep="):
        time.sleep(float(_rule.split("=", 1)[1]))
        return
    action, _, at = _rule.partition("@")
    if not at or _hits[site] != int(at):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    if action == "raise":
        raise RuntimeError(f"injected failure at {site} #{_hits[site]}")


def sample_fault(seed: int | None, produced: int) -> None:
    """Raise for the sequence whose sampling seed the spec names (``sample:raise_seed=S``) once it
    has ``produced`` two tokens."""
    if _site == "sample" and _rule.startswith("raise_seed=") and seed == int(_rule[11:]) and produced >= 2:
        raise RuntimeError(f"injected failure while sampling seed {seed}")


def nan_loss_at(step: int) -> bool:
    """True when the fault spec asks for a NaN loss at optimizer step ``step`` (1-based)."""
    return _site == "loss" and _rule.startswith("nan@") and int(_rule[4:]) == step
