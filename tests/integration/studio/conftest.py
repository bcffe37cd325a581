"""`llmkit studio` started through the real CLI on a free port on 127.0.0.1, over a temporary
workspace; requests go over the socket, with the page's CSRF token as the page sends it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ..serving.conftest import free_port
from ..training.helpers import TINY, deep_update


@dataclass
class Studio:
    proc: subprocess.Popen[str]
    url: str
    workspace: Path
    key: str | None = None
    csrf: str = ""
    log: list[str] = field(default_factory=list)

    def headers(self, **extra: str) -> dict[str, str]:
        h = {"X-Studio-CSRF": self.csrf}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        return {**h, **extra}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=kw.pop("headers", None) or self.headers(), timeout=120, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body if body is not None else {},
                          headers=kw.pop("headers", None) or self.headers(), timeout=300, **kw)

    def run(self, name: str) -> dict[str, Any]:
        resp = self.get(f"/api/runs/{name}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait(self, name: str, done: Any, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.run(name)
            if done(d):
                return d
            time.sleep(0.3)
        raise AssertionError(f"timed out; last state {d['status']} step {d['step']}: {d['log'][-5:]}")


def start_studio(workspace: Path, *args: str, env: dict[str, str] | None = None, key: str | None = None) -> Studio:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "studio", "--workspace", str(workspace), "--port", str(port),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    studio = Studio(proc, f"http://127.0.0.1:{port}", workspace, key)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the studio exited: {proc.stdout.read()[-3000:]}")  # type: ignore[union-attr]
        try:
            page = httpx.get(studio.url + "/", timeout=2)
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        studio.csrf = re.search(r'name="csrf" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        return studio
    proc.kill()
    raise RuntimeError("the studio did not start")


def stop_studio(studio: Studio) -> None:
    if studio.proc.poll() is None:
        studio.proc.send_signal(signal.SIGINT)
        try:
            studio.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            studio.proc.kill()


def tiny_yaml(name: str, **sections: Any) -> str:
    """The training tests' tiny llama as the studio writes configs: runs under the workspace's runs/."""
    return yaml.safe_dump(deep_update(TINY, {"name": name, "runs_root": "runs", **sections}), sort_keys=False)


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    """One studio for a module's tests (each uses runs of its own names)."""
    s = start_studio(tmp_path_factory.mktemp("workspace"))
    yield s
    stop_studio(s)
