"""`llmkit serve`'s entry points: the settings a model is served with, serving it in the
foreground until a signal (the CLI), or starting it in a background thread of this process with
a handle that stops it (the Python API). Both drain the same way (``server.wait_drained``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llmkit.config.load import load_config
from llmkit.config.schema import GenerateConfig, RunConfig, ServeConfig
from llmkit.errors import RunFailure, UsageError
from llmkit.rundir import RunDir, generate_defaults
from llmkit.serving.server import build, ensure_serve_extra, serve, wait_drained

logger = logging.getLogger("llmkit")


def serve_config(model_path: str | Path, config: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The config a model is served with: ``config`` with ``overrides``, or without one the model's
    run's sampling defaults (its ``generate`` section, as generate and chat use) and ``overrides``."""
    base = {"name": "serve", "generate": generate_defaults(model_path).model_dump(mode="json")}
    return load_config(config, list(overrides), base=base if config is None else None)


def serve_foreground(model_path: str | Path, cfg: RunConfig, served_name: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return (`llmkit serve`), in ``cfg``'s run context
    (privacy.offline; an encrypted run's model opens with its own key)."""
    from llmkit.config.derived import run_context

    ensure_serve_extra()
    with run_context(cfg).active():
        serve(model_path, cfg.serve, cfg.generate, served_name)


class Server:
    """A running llmkit server in this process: ``url`` (the OpenAI API is under ``url + "/v1"``),
    ``model`` (the served model id), ``stop()`` (drains in-flight requests, then closes); also a
    context manager."""

    def __init__(self, url: str, model: str, stop: Callable[[], None]):
        self.url, self.model, self._stop = url, model, stop

    def stop(self) -> None:
        self._stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Server(url={self.url!r}, model={self.model!r})"


def start(model: str | Path, host: str = "127.0.0.1", port: int = 0, served_name: str | None = None,
          settings: Mapping[str, Any] | None = None, start_timeout_s: float = 600.0) -> Server:
    """Serve a run (its final model, with its config's serve and generate sections) or a model
    directory with llmkit's engine, in a background thread of this process; returns once it
    accepts requests. ``port=0`` picks a free port. ``settings``: serve-section keys to change."""
    import uvicorn

    ensure_serve_extra()
    run = RunDir(Path(model))
    cfg = run.load_config() if run.config.exists() else None
    base = cfg.serve.model_dump() if cfg else {}
    serve_cfg = ServeConfig.model_validate({**base, **dict(settings or {}), "host": host, "port": port})
    if serve_cfg.engine != "llmkit":
        raise UsageError("llmkit.serve runs llmkit's own engine in this process", f"engine: {serve_cfg.engine}",
                         "use the CLI (`llmkit serve --engine vllm`) for vLLM")
    built = build(Path(model), serve_cfg, cfg.generate if cfg else GenerateConfig(), served_name, note=logger.warning,
                  uvicorn_logging=False)
    server = uvicorn.Server(built.config)  # in a thread, uvicorn leaves signals alone
    thread = threading.Thread(target=server.run, name="llmkit-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            built.engine.close()
            raise RunFailure(f"the server did not start on {host}:{port}", "see the llmkit logger's messages",
                             "check that the port is free and the model loads")
        time.sleep(0.02)
    url = f"http://{host}:{server.servers[0].sockets[0].getsockname()[1]}"
    logger.info("serving %s on %s (OpenAI API under /v1)", built.name, url)
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        wait_drained(built, serve_cfg.drain_timeout_s)  # readiness and new requests 503, as on SIGTERM
        server.should_exit = True
        thread.join(timeout=30)
        built.engine.close()

    return Server(url, built.name, stop)
