"""Progress: a rich bar on a terminal; plain log lines (every log step) elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Shows step, loss, lr, tokens/s, MFU and ETA."""

    def __init__(self, total_steps: int | None, start_step: int, log: Callable[[str], None],
                 every: int = 10, interactive: bool | None = None):
        self.total, self.start, self.log, self.every = total_steps, start_step, log, every
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._bar: Any = None
        self._task: Any = None
        self._t0 = time.monotonic()

    def __enter__(self) -> Progress:
        if self.interactive:
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self._bar = RichProgress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, record: dict[str, Any]) -> None:
        info = f"loss {record['loss']:.4f}"
        if "reward_accuracy" in record:  # preference tuning
            info += f" | reward acc {record['reward_accuracy']:.2f} | margin {record['reward_margin']:.3g}"
        if "zero_spread_groups" in record:  # RL: the answers' mean reward, length, groups without signal
            info += (f" | reward {record['reward']:.3f} | length {record['length']:.1f}"
                     f" | flat groups {record['zero_spread_groups']:.2f}")
            if "generation_s" in record:
                info += f" | sampling {record['generation_s']:.1f}s"
        info += (f" | lr {record['lr']:.2e} | {record['tokens_per_s'] / 1000:.1f}k tok/s"
                 f" | MFU {100 * record['mfu']:.0f}%")
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
            return
        if step % self.every == 0 or step == self.total:
            eta = ""
            if self.total:
                rate = (time.monotonic() - self._t0) / max(1, step - self.start)
                eta = f" | ETA {_eta(rate * (self.total - step))}"
            self.log(f"step {step}/{self.total or '?'} | {info}{eta}")

    def note(self, text: str) -> None:
        """A line that stays (evaluations, checkpoints)."""
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            self.log(text)
