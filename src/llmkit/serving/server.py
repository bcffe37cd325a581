"""Start the server: security checks, model loading, uvicorn, and draining on SIGTERM.

SIGTERM (or Ctrl-C) flips readiness to 503 at once; new requests get 503; requests in flight
finish (up to ``drain_timeout_s``); then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.config.schema import GenerateConfig, ServeConfig
from llmkit.errors import ConfigError, EnvironmentProblem, UsageError
from llmkit.optional import require

log = logging.getLogger("llmkit.serving")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_from_env(cfg: ServeConfig, environ: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """The API key named by ``api_key_env`` (its value never appears in logs or errors)."""
    if cfg.api_key_env is None:
        return None
    key = environ.get(cfg.api_key_env, "")
    if not key:
        raise ConfigError(f"serve.api_key_env names ${cfg.api_key_env}, which is not set", "",
                          f"export {cfg.api_key_env}=<a long random key>, or drop --api-key-env")
    return key


def configure_logging() -> None:
    """The server's own log lines (ignored request fields, failed requests) on stderr, once."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def check_bind(cfg: ServeConfig, api_key: str | None) -> str | None:
    """Refuse a public bind without a key unless explicitly allowed; returns a warning to print."""
    if is_loopback(cfg.host):
        return None
    if api_key is None and not cfg.allow_unauthenticated:
        raise ConfigError(f"refusing to serve on {cfg.host} without an API key",
                          "anyone who can reach this address could use the model",
                          "set --api-key-env NAME (and export NAME), or pass --allow-unauthenticated")
    if api_key is None:
        return f"warning: serving on {cfg.host} WITHOUT authentication (--allow-unauthenticated)"
    return None


def vllm_command(model_dir: Path, cfg: ServeConfig, served_name: str) -> list[str]:
    """The `vllm serve` command equivalent to this server's options (the key goes by env var)."""
    cmd = ["vllm", "serve", str(model_dir), "--host", cfg.host, "--port", str(cfg.port),
           "--served-model-name", served_name, "--max-num-seqs", str(cfg.max_batch_size),
           "--dtype", {"fp32": "float32", "bf16": "bfloat16"}.get(cfg.dtype, "auto")]
    if cfg.compile is False:
        cmd.append("--enforce-eager")
    if cfg.api_key_env:
        cmd += ["--api-key", f"${cfg.api_key_env}"]  # expanded by the shell we exec through
    if cfg.cors_origins:
        cmd += ["--allowed-origins", ",".join(cfg.cors_origins)]
    parser = tool_parser_name(model_dir, cfg)
    if parser is not None:  # vLLM's parsers of these formats have the same names
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    return cmd


def tool_parser_name(model_dir: Path, cfg: ServeConfig) -> str | None:
    """serve.tool_parser, or under auto the format the model's chat template writes (None: none)."""
    from llmkit.data.tokenizer import chat_template_text
    from llmkit.serving.toolcalls.base import parser_for

    if cfg.tool_parser != "auto":
        return cfg.tool_parser
    parser = parser_for(chat_template_text(model_dir))
    return parser.name if parser is not None else None


def run_vllm(model_dir: Path, cfg: ServeConfig, served_name: str) -> None:
    """Hand the model directory to vLLM's OpenAI server, or say what is missing."""
    import torch

    from llmkit.privacy import crypto

    if crypto.has_sealed(model_dir):
        raise UsageError(f"{model_dir} is encrypted at rest, and vLLM reads plain files only",
                         "llmkit decrypts a run in memory for its own engine; vLLM would need the plaintext on disk",
                         "serve it with --engine llmkit, or `llmkit export RUN --decrypt --out DIR` to a protected "
                         "place and serve DIR with vLLM")
    if shutil.which("vllm") is None:
        raise EnvironmentProblem("--engine vllm needs vLLM", "the `vllm` command is not installed",
                                 "pip install vllm (on a Linux machine with an NVIDIA GPU), or use --engine llmkit")
    if not torch.cuda.is_available():
        raise EnvironmentProblem("--engine vllm needs a CUDA GPU", "torch sees none on this machine",
                                 "use --engine llmkit here")
    cmd = " ".join(vllm_command(model_dir, cfg, served_name))
    os.execvp("sh", ["sh", "-c", f"exec {cmd}"])


@dataclass
class Built:
    """A server ready to run: the guarded ASGI app, its state and engine, and uvicorn's config."""

    app: Any
    state: Any
    engine: Any
    name: str
    config: Any


def build(model_path: str | Path, cfg: ServeConfig, defaults: GenerateConfig, served_name: str | None = None,
          note: Callable[[str], None] = lambda line: print(line, file=sys.stderr), uvicorn_logging: bool = True) -> Built:
    """Load the model and build the app and uvicorn's config (nothing listens yet)."""
    from llmkit.model.load import load_for_inference, resolve_model_dir

    warning = check_bind(cfg, api_key_from_env(cfg))
    model_dir = resolve_model_dir(model_path)
    name = served_name or (model_dir.parent.name if model_dir.name == "final" else model_dir.name)
    if warning:
        note(warning)
    quantized = cfg.dtype in ("int8", "int4")
    if quantized and (cfg.adapters or cfg.allow_adapter_loading):
        raise ConfigError(f"serve.dtype {cfg.dtype} with LoRA adapters is not supported yet",
                          "the adapters wrap the base's nn.Linear layers, which int8/int4 replace",
                          "serve the adapters on an fp32 or bf16 base, or merge one adapter and quantize that")
    model, tokenizer, _ = load_for_inference(model_dir, dtype=cfg.dtype)
    if cfg.dtype == "bf16":
        note("decoding in bf16 (serve.dtype): `llmkit verify RUN --bf16` shows how far it is from the fp32 model")
    elif quantized:
        from llmkit.wquant import describe

        note(f"serve.dtype {cfg.dtype}: {describe(model.quantized_linear)}; `llmkit verify RUN --endpoint URL` "
             "measures its perplexity against the fp32 model")
    return assemble(model, tokenizer, cfg, defaults, name, f"{name}@{model_dir}", note, uvicorn_logging)


def assemble(model: Any, tokenizer: Any, cfg: ServeConfig, defaults: GenerateConfig, name: str, namespace: str,
             note: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
             uvicorn_logging: bool = True) -> Built:
    """The engine, the app and uvicorn's config around a loaded model (``build`` loads it; ``llmkit
    plan --serve`` times a replica of a model through the same server)."""
    import uvicorn

    from llmkit.serving.app import Guard, State, create_app
    from llmkit.serving.engine import Engine, decode_step

    api_key = api_key_from_env(cfg)
    # the step is packed, compiled and warmed on the engine's thread, where it will run
    engine = Engine(model, tokenizer, cfg.max_batch_size, cfg.max_concurrency, cfg.max_queue,
                    lambda: decode_step(model, tokenizer, compiled=cfg.compile is True, pack=cfg.pack_weights,
                                        frozen=not (cfg.adapters or cfg.allow_adapter_loading)),
                    prefix_cache_bytes=int(cfg.prefix_cache_mb * 2**20), namespace=namespace,
                    adapters=(lambda: served_adapters(model, cfg, name, note))
                    if cfg.adapters or cfg.allow_adapter_loading else None)
    longest = max((len(t) for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) if t), default=16)
    state = State(engine, tokenizer, name, defaults, cfg, api_key, max_token_bytes=max(4, longest * 4),
                  adapters={n: engine.adapters.slot(n) for n in engine.adapters.names} if engine.adapters else {})
    app = create_app(state)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    guarded = Guard(app, state)
    # h11 explicitly: its header-size limit is what the tests prove; with uvicorn[standard] installed
    # uvicorn would pick httptools, which takes a 200 KB header
    extra: dict[str, Any] = {} if uvicorn_logging else {"log_config": None}
    config = uvicorn.Config(guarded, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            http="h11", timeout_graceful_shutdown=1, h11_max_incomplete_event_size=65536, **extra)
    return Built(guarded, state, engine, name, config)


def served_adapters(model: Any, cfg: ServeConfig, base_name: str, note: Callable[[str], None]) -> Any:
    """The LoRA adapters of serve.adapters, loaded on the base (its projections wrapped)."""
    from llmkit.model.multilora import AdapterSet, adapter_directory

    adapters = AdapterSet(model)
    for name, path in cfg.adapters.items():
        if name == base_name:
            raise ConfigError(f"serve.adapters: {name!r} is the base model's name", "requests pick models by name",
                              "give the adapter another name")
        adapters.load(name, adapter_directory(path))
        note(f"adapter {name} loaded from {path}")
    return adapters


def wait_drained(built: Built, timeout_s: float) -> None:
    """Stop taking requests (readiness 503, new requests 503), then wait until the in-flight ones
    have finished, at most ``timeout_s`` (serve.drain_timeout_s). The CLI's signal handler and the
    Python API's ``stop()`` both drain with it."""
    built.state.draining = True
    deadline = time.monotonic() + timeout_s
    while (built.state.in_flight or built.engine.active or built.engine.queued) and time.monotonic() < deadline:
        time.sleep(0.05)


def serve(model_path: str | Path, cfg: ServeConfig, defaults: GenerateConfig, served_name: str | None = None) -> None:
    """Load the model and serve until SIGTERM/SIGINT (then drain and return)."""
    import uvicorn

    from llmkit.model.load import resolve_model_dir

    if cfg.engine == "vllm":
        if cfg.dtype in ("int8", "int4"):
            raise ConfigError(f"serve.dtype {cfg.dtype} applies to the llmkit engine",
                              "vLLM serves a checkpoint quantized beforehand (AWQ, GPTQ, FP8), not one it rounds at load",
                              "use --dtype bf16 or fp32 with --engine vllm, or --engine llmkit")
        if cfg.pack_weights is True:
            raise ConfigError("serve.pack_weights: true applies to the llmkit engine",
                              "vLLM lays out its own weights on the GPU",
                              "remove serve.pack_weights (or set it to auto) with --engine vllm")
        model_dir = resolve_model_dir(model_path)
        name = served_name or (model_dir.parent.name if model_dir.name == "final" else model_dir.name)
        if cfg.ui:
            print("note: --engine vllm serves no chat page at / (vLLM's server has none); --engine llmkit does",
                  file=sys.stderr)
        run_vllm(model_dir, cfg, name)
        return
    configure_logging()
    built = build(model_path, cfg, defaults, served_name)

    class DrainingServer(uvicorn.Server):
        """uvicorn without its own signal handling: ours drains first, then sets should_exit."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # uvicorn >= 0.29
            yield

        def install_signal_handlers(self) -> None:  # older uvicorn
            return None

    server = DrainingServer(built.config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)

        async def stop_after_drain() -> None:
            await stopping.wait()
            await asyncio.to_thread(wait_drained, built, cfg.drain_timeout_s)
            server.should_exit = True

        drainer = asyncio.ensure_future(stop_after_drain())
        print(f"serving {built.name} on http://{cfg.host}:{cfg.port} (OpenAI API under /v1)", flush=True)
        await server.serve()
        drainer.cancel()

    try:
        asyncio.run(main())
    finally:
        built.engine.close()


def ensure_serve_extra() -> None:
    """Fail with the install command when FastAPI/uvicorn are missing."""
    require("fastapi", "serve", "llmkit serve")
    require("uvicorn", "serve", "llmkit serve")
