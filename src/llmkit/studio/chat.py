"""Chat from the studio: each model chatted with is served by its own ``llmkit serve`` process on
127.0.0.1 (a port of its own, a random key only the studio knows), and the studio passes the
page's requests to it. So the answers, streaming, Stop and the safety rules are the server's
own, and what is chatted with is served as ``llmkit serve`` would serve it.

A run's final model is served from the run directory (its ``generate`` and ``serve`` sections,
decrypted in memory with its key). A checkpoint is first written as ``final/`` would be
(``training.final.materialise_checkpoint``, under ``studio/models/``) and served with the run's
config.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.rundir import RunDir
from llmkit.studio.workspace import Refused

KEY_ENV = "LLMKIT_STUDIO_CHAT_KEY"
READY_TIMEOUT_S = 300.0
MAX_OPEN = 4
"""Models served at once; opening one more closes the one opened longest ago."""


@dataclass
class ChatServer:
    id: str
    run: str
    step: int | None
    port: int
    key: str
    process: subprocess.Popen[bytes]
    opened: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_dir(run: RunDir, step: int | None, log: Any = lambda _line: None) -> Path:
    """What is served for ``step`` (None: the final model): the run itself, or the checkpoint
    written as a model directory once (kept under ``studio/models/``)."""
    if step is None:
        if not run.final.is_dir():
            raise Refused(f"{run.root.name} has no final model yet", "it is written when training ends",
                          "chat with a checkpoint, or let the run finish", status=409)
        return run.root
    out = run.root / "studio" / "models" / f"step-{step:06d}"
    if not (out / "config.json").exists():
        from llmkit.training.final import materialise_checkpoint

        with run.run_context().open_run(run.root):
            materialise_checkpoint(run, step, out, log)
    return out


class ChatServers:
    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.servers: dict[str, ChatServer] = {}
        self.opening: dict[str, threading.Lock] = {}
        self.lock = threading.Lock()

    def open(self, run: RunDir, step: int | None) -> ChatServer:
        """The server of this run's model (``step`` None: final), started when not yet running."""
        chat_id = f"{run.root.name}@{'final' if step is None else step}"
        with self.lock:
            opening = self.opening.setdefault(chat_id, threading.Lock())
        with opening:  # one server a model, however many pages ask at once
            with self.lock:
                found = self.servers.get(chat_id)
            if found is not None and found.process.poll() is None:
                return found
            return self._start(run, step, chat_id)

    def _start(self, run: RunDir, step: int | None, chat_id: str) -> ChatServer:
        path = model_dir(run, step)
        key, port = secrets.token_urlsafe(24), _free_port()
        env = {**os.environ, KEY_ENV: key}
        argv = [sys.executable, "-m", "llmkit", "serve", str(path), "--config", str(run.config), "--host", "127.0.0.1",
                "--port", str(port), "--api-key-env", KEY_ENV, "--no-ui", "--served-model-name", chat_id]
        (run.root / "studio").mkdir(exist_ok=True)
        with (run.root / "studio" / "chat.log").open("ab") as log:
            process = subprocess.Popen(argv, cwd=self.workspace, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=log)
        server = ChatServer(chat_id, run.root.name, step, port, key, process, time.time())
        self._wait_ready(server, run)
        with self.lock:
            self.servers[chat_id] = server
            while len(self.servers) > MAX_OPEN:
                oldest = min(self.servers.values(), key=lambda s: s.opened)
                self._close(oldest)
        return server

    def _wait_ready(self, server: ChatServer, run: RunDir) -> None:
        import httpx

        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                from llmkit.studio.workspace import log_tail

                raise Refused(f"the model of {server.id} could not be served",
                              "\n".join(log_tail(run.root / "studio" / "chat.log", 8)), "see the lines above")
            try:
                if httpx.get(server.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        server.process.terminate()
        raise Refused(f"the model of {server.id} was not ready in {READY_TIMEOUT_S:.0f} s", "", "try again", status=504)

    def get(self, chat_id: str) -> ChatServer:
        with self.lock:
            server = self.servers.get(chat_id)
        if server is None or server.process.poll() is not None:
            raise Refused(f"no model {chat_id!r} is open for chat", "", "open it from the run's page", status=404)
        return server

    def _close(self, server: ChatServer) -> None:
        self.servers.pop(server.id, None)
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()

    def close_all(self) -> None:
        with self.lock:
            for server in list(self.servers.values()):
                self._close(server)
