"""Test-wide guards and fixtures.

- No test may open a socket to, or bind, a non-loopback address: the suite runs offline.
- Tests marked `gpu` are skipped where no CUDA device is present.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

_LOOPBACK_NAMES = {"localhost", "", "ip6-localhost"}


def _is_loopback(address: object) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX paths and the like
    host = str(address[0])
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a hostname that would need DNS


class NonLoopbackSocket(RuntimeError):
    """Raised when a test tries to reach or bind beyond 127.0.0.1."""


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect, real_connect_ex, real_bind = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.socket.bind,
    )

    def guard(real):  # type: ignore[no-untyped-def]
        def wrapped(self, address):  # type: ignore[no-untyped-def]
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
                raise NonLoopbackSocket(f"test opened a non-loopback socket to {address!r}")
            return real(self, address)

        return wrapped

    monkeypatch.setattr(socket.socket, "connect", guard(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(real_connect_ex))
    monkeypatch.setattr(socket.socket, "bind", guard(real_bind))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("LLMKIT_NETWORK_TESTS") != "1":
        offline = pytest.mark.skip(reason="talks to the real Hugging Face Hub: set LLMKIT_NETWORK_TESTS=1 to run it")
        for item in items:
            if item.get_closest_marker("network"):
                item.add_marker(offline)
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `llmkit` entry point in a subprocess (as `python -m llmkit`)."""
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONWARNINGS", "ignore")
    return subprocess.run(
        [sys.executable, "-m", "llmkit", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli():  # type: ignore[no-untyped-def]
    """The `run_cli` helper as a fixture."""
    return run_cli


@pytest.fixture(scope="session")
def llama_cpp():  # type: ignore[no-untyped-def]
    """llama-cpp-python, for the ``llamacpp`` tier: missing, the test fails (the tier must not pass
    without running llama.cpp; CI builds it)."""
    try:
        import llama_cpp
    except ImportError:
        pytest.fail("llama-cpp-python is not installed: pip install 'llmkit[llamacpp]' (it builds llama.cpp from source)")
    return llama_cpp
