"""Real servers on real sockets on 127.0.0.1, started through the real CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ..training.helpers import make_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    model: str

    def client(self, **kw) -> httpx.Client:  # type: ignore[no-untyped-def]
        return httpx.Client(base_url=self.url, timeout=60, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None and httpx.get(self.url + "/health", timeout=10).status_code == 200


def start_server(model_dir: Path, *args: str, env: dict[str, str] | None = None, ready_within: float = 90) -> Server:
    """`llmkit serve` on a free port, once it answers /ready. serve.pack_weights is pinned to false
    unless a test passes its own flag: auto decides by timing the products at start-up, and a test
    must not depend on what a loaded machine measured."""
    port = free_port()
    if not any(a in ("--pack-weights", "--no-pack-weights") for a in args):
        args = (*args, "--no-pack-weights")
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", str(model_dir), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(url + "/ready", timeout=2).status_code in (200, 401):
                return Server(proc, url, "t")
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained llama (context 64) in a run directory."""
    from llmkit.config.load import load_config
    from llmkit.training.loop import train

    root = tmp_path_factory.mktemp("srv")
    cfg = make_run(root, model={"max_position_embeddings": 64},
                   train={"max_steps": 20, "eval_every_steps": 20, "sequence_length_tokens": 32})
    return train(load_config(cfg, environ={}), log=lambda _: None).run_dir


@pytest.fixture(scope="session")
def server(model_dir: Path) -> Iterator[Server]:
    s = start_server(model_dir, "--max-concurrency", "80", "--max-batch-size", "16")
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def long_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama trained 10 steps with a 2048-token context (room for tool lists and schemas);
    its tokenizer carries llmkit's chat template with tool calls."""
    from llmkit.config.load import load_config
    from llmkit.training.loop import train

    root = tmp_path_factory.mktemp("long")
    cfg = make_run(root, model={"max_position_embeddings": 2048},
                   train={"max_steps": 10, "eval_every_steps": 10, "sequence_length_tokens": 64})
    return train(load_config(cfg, environ={}), log=lambda _: None).run_dir


@pytest.fixture(scope="session")
def long_server(long_model_dir: Path) -> Iterator[Server]:
    s = start_server(long_model_dir, "--max-concurrency", "32", "--max-batch-size", "16")
    yield s
    stop_server(s)
