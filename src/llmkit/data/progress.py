"""Progress of `prepare` over a corpus, by bytes of text: a rich bar with ETA on a terminal,
plain lines every tenth of the way (with ETA) elsewhere, as `train` does for steps. Plain lines
start only once the work has taken QUIET_S seconds, so a small corpus prints none."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from llmkit.config.schema import DataConfig


def corpus_bytes(cfg: DataConfig) -> int | None:
    """The corpus's size in bytes before reading it, where that is known cheaply (files and the
    embedded corpus; None for datasets and mixtures)."""
    if cfg.mix or cfg.source == "hf":
        return None
    if cfg.source == "embedded":
        from llmkit.data.corpus import _stdlib_files, embedded_topics

        total = sum(len(text.encode("utf-8")) for _, text in embedded_topics())
        if cfg.include_stdlib_source:
            total += sum(p.stat().st_size for p in _stdlib_files())
        return total
    root = Path(cfg.path or "")
    if cfg.source == "dir" and root.is_dir():
        return sum(p.stat().st_size for p in root.glob(cfg.glob) if p.is_file())
    return root.stat().st_size if root.is_file() else None


QUIET_S = 2.0


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ByteProgress:
    """``wrap(documents)`` passes them through, reporting the share of ``total`` bytes read."""

    def __init__(self, what: str, total: int | None, log: Callable[[str], None], interactive: bool | None = None):
        self.what, self.total, self.log = what, total, log
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.done = 0
        self.t0 = time.monotonic()
        self._next = 0.1

    def _line(self) -> str:
        mb = self.done / 1e6
        if not self.total:
            return f"{self.what}: {mb:,.1f} MB"
        share = min(1.0, self.done / self.total)
        elapsed = time.monotonic() - self.t0
        eta = _eta(elapsed / share * (1 - share)) if share > 0 else "?"
        return f"{self.what}: {share:.0%} ({mb:,.1f} of {self.total / 1e6:,.1f} MB), ETA {eta}"

    def wrap(self, documents: Iterable[str]) -> Iterator[str]:
        bar: Any = None
        task: Any = None
        if self.interactive:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(TextColumn(self.what), BarColumn(), DownloadColumn(), TimeRemainingColumn(), transient=True)
            bar.__enter__()
            task = bar.add_task(self.what, total=self.total)
        try:
            for doc in documents:
                self.done += len(doc.encode("utf-8", errors="surrogatepass"))
                if bar is not None:
                    bar.update(task, completed=self.done)
                elif self.total and self.done / self.total >= self._next:
                    if time.monotonic() - self.t0 >= QUIET_S:
                        self.log(self._line())
                    while self._next <= self.done / self.total:
                        self._next += 0.1
                yield doc
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
        if time.monotonic() - self.t0 >= QUIET_S:
            self.log(f"{self.what}: {self.done / 1e6:,.1f} MB in {time.monotonic() - self.t0:.1f} s")
