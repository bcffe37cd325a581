"""`llmkit chat`'s prompt read from a pipe (cli.generate_cmd._ask): the line, EOF as Ctrl-D, and a
Ctrl-C while it waits raised at once. The whole command's Ctrl-C is tested through the CLI in
tests/integration/test_quickstart.py."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from llmkit.cli.generate_cmd import _ask


@pytest.fixture
def pipe(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    read, write = os.pipe()
    stdin = os.fdopen(read, "r")
    monkeypatch.setattr(sys, "stdin", stdin)
    yield write
    stdin.close()


def test_a_line_then_eof(pipe: int, capsys: pytest.CaptureFixture[str]) -> None:
    os.write(pipe, b"hello there\n")
    assert _ask("you> ") == "hello there"
    os.close(pipe)
    with pytest.raises(EOFError):
        _ask("you> ")
    assert capsys.readouterr().out == "you> you> "


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX signals")
def test_ctrl_c_while_waiting_is_raised(pipe: int) -> None:
    main = threading.get_ident()
    threading.Timer(0.3, lambda: signal.pthread_kill(main, signal.SIGINT)).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _ask("you> ")
    assert time.monotonic() - started < 5
    os.close(pipe)
