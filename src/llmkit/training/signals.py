"""SIGTERM / SIGINT: finish the current step, checkpoint, then exit 143 / 130."""

from __future__ import annotations

import signal
import threading
from types import FrameType

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class StopSignals:
    """Records the first SIGTERM/SIGINT instead of dying; the loop checks it between steps.

    A second SIGINT falls through to Python's default (KeyboardInterrupt), so a user who presses
    Ctrl-C twice is never stuck.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    @property
    def exit_code(self) -> int:
        """143 for SIGTERM, 130 for SIGINT, 0 if no signal arrived."""
        return EXIT_CODES.get(self.received, 0) if self.received else 0
