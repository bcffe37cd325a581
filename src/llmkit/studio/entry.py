"""`llmkit studio`: the web app over a workspace, until Ctrl-C (jobs it started keep running)."""

from __future__ import annotations

import os
import secrets as secrets_
import socket
from collections.abc import Callable
from pathlib import Path

from llmkit.errors import UsageError
from llmkit.optional import require

DEFAULT_PORT = 7860
DEFAULT_UPLOAD_MB = 512


def _port(host: str, port: int) -> int:
    """``port``, or a free one for 0 (the page's Host check needs the real one)."""
    if port:
        return port
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        return int(s.getsockname()[1])


def run_studio(workspace: str | Path = ".", host: str = "127.0.0.1", port: int = DEFAULT_PORT,
               api_key_env: str | None = None, max_upload_mb: int = DEFAULT_UPLOAD_MB,
               echo: Callable[[str], None] = print) -> None:
    """Serve the studio over ``workspace`` (its ``runs/`` holds the runs)."""
    require("fastapi", "studio", "llmkit studio")
    uvicorn = require("uvicorn", "studio", "llmkit studio")
    require("httpx", "studio", "llmkit studio's chat")
    from llmkit.studio.app import create_app
    from llmkit.studio.chat import ChatServers
    from llmkit.studio.guard import LOOPBACK, Secrets
    from llmkit.studio.workspace import Workspace

    ws = Workspace.at(workspace)
    os.chdir(ws.root)  # a config's relative paths mean the same here as in the jobs (which run there)
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise UsageError(f"--api-key-env {api_key_env}: that variable is empty or unset", "",
                             f"export {api_key_env}=<a long random key>")
    if host not in LOOPBACK and key is None:
        raise UsageError(f"the studio binds {host} only with an API key",
                         "anyone who reaches that address could start jobs and read the runs",
                         "pass --api-key-env NAME (a variable holding the key), or bind 127.0.0.1")
    port = _port(host, port)
    keys = Secrets(key, secrets_.token_urlsafe(32), secrets_.token_bytes(32), host, port, max_upload_mb << 20)
    chats = ChatServers(ws.root)
    app = create_app(ws, keys, chats)
    shown = f"[{host}]" if ":" in host else host
    echo(f"llmkit studio: http://{shown}:{port}/ (workspace {ws.root}; Ctrl-C stops the studio, not its jobs)")
    try:
        uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        chats.close_all()
