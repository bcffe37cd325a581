"""llmkit as a library: the CLI's stages as functions with typed results, for notebooks and scripts.

    import llmkit

    cfg = llmkit.load_config("run.yaml", ["train.max_steps=200"])   # or a dict
    llmkit.prepare(cfg)
    trained = llmkit.train(cfg)                  # TrainResult: run_dir, step, reason, eval
    report = llmkit.evaluate(trained.run_dir)    # Evaluation: metrics, samples
    llmkit.export(trained.run_dir, "export/")    # Exported: path, files, verified
    with llmkit.serve(trained.run_dir) as server:   # in this process, a free port on 127.0.0.1
        print(server.url)                        # OpenAI API under server.url + "/v1"
    print(llmkit.plan(cfg).recommendations)

Nothing here prints. Progress lines go to ``log`` when a stage is given one, else to the standard
``logging`` logger ``llmkit`` at INFO (``logging.basicConfig(level=logging.INFO)`` shows them).
Errors are :class:`llmkit.errors.LlmkitError` subclasses with ``summary``, ``detail`` and ``fix``.
These are the same functions the CLI calls; a run made here is a run the CLI can continue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.config.schema import RunConfig
from llmkit.data.prepare import PrepareResult
from llmkit.errors import RunFailure, UsageError
from llmkit.plan.recommend import Plan
from llmkit.plan.serving import ServePlan
from llmkit.train.loop import TrainResult

__all__ = ["load_config", "prepare", "train", "evaluate", "export", "serve", "plan", "plan_serving",
           "Evaluation", "Exported", "Server", "PrepareResult", "TrainResult", "Plan", "ServePlan", "RunConfig"]

logger = logging.getLogger("llmkit")
Log = Callable[[str], None]


def _log(log: Log | None) -> Log:
    return log if log is not None else logger.info


def load_config(source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
    """A validated run config from a YAML file or a mapping (as ``llmkit init`` writes them), with
    ``section.key=value`` overrides applied in order (the CLI's ``--set``). Environment overrides
    (``LLMKIT_RUNS_ROOT``, ``LLMKIT_DEVICE``, ``LLMKIT_PRECISION``) apply as in the CLI."""
    from llmkit.config.load import load_config as _load

    if isinstance(source, Mapping):
        return _load(None, overrides, base=source)
    return _load(source, overrides)


def prepare(config: RunConfig, run_dir: str | Path | None = None, retrain_tokenizer: bool = False,
            strict: bool = False, log: Log | None = None) -> PrepareResult:
    """Train or load the tokenizer and tokenize the data the config's task needs (`llmkit prepare`;
    ``strict``: SFT examples that fail the data checks are an error)."""
    from llmkit.data.prepare import prepare as _prepare

    return _prepare(config, run_dir, retrain_tokenizer, log=_log(log), strict=strict)


def train(config: RunConfig, run_dir: str | Path | None = None, resume: str = "auto",
          stop_at_step: int | None = None, allow_config_change: bool = False, log: Log | None = None) -> TrainResult:
    """Train as the config says, resuming from the newest checkpoint by default (`llmkit train`,
    one process). ``result.exit_code`` is what the CLI would exit with."""
    from llmkit.train.loop import train as _train

    return _train(config, run_dir, resume, allow_config_change, stop_at_step, log=_log(log), bar=False)


@dataclass
class Evaluation:
    """`llmkit eval`'s result: ``metrics`` (val_loss, val_ppl, bits_per_byte, or accuracy and the
    confusion matrix), ``samples`` (prompt and completion), ``harness`` (lm-evaluation-harness
    results when tasks ran), and ``raw``, what eval.json holds."""

    metrics: dict[str, Any]
    samples: list[dict[str, str]] = field(default_factory=list)
    harness: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def evaluate(run: str | Path, tasks: Sequence[str] = (), limit: int | None = None) -> Evaluation:
    """Evaluate a run's final model on its validation data (and lm-evaluation-harness ``tasks``);
    writes the run's eval.json as `llmkit eval` does."""
    from llmkit.eval.run import evaluate_run

    raw = evaluate_run(run, harness_tasks=list(tasks), harness_limit=limit)
    return Evaluation(raw.get("metrics", {}), raw.get("samples", []), raw.get("harness"), raw)


@dataclass
class Exported:
    """What `export` wrote: the path, its files, the format, and for a float32 Hugging Face export
    whether plain transformers reproduces the run's model (``verified``; None when not checked)."""

    path: Path
    format: str
    files: list[str]
    verified: bool | None = None
    report: Any = None
    pushed: str | None = None  # the Hub commit's URL, with push_to_hub


def export(run: str | Path, out: str | Path, format: str = "hf", dtype: str = "float32", merge_lora: bool = True,
           quant: str = "f32", overwrite: bool = False, verify: bool = True, push_to_hub: str | None = None,
           private: bool = False) -> Exported:
    """Export the run's model: a Hugging Face directory (``format="hf"``, ``dtype``, merged LoRA or
    the adapter) or a GGUF file (``format="gguf"``, ``quant``). A float32 HF export is verified
    against the run's model unless ``verify=False``. ``push_to_hub="org/name"`` then uploads it with
    a model card (not when verification failed)."""
    exported = _export(run, out, format, dtype, merge_lora, quant, overwrite, verify)
    if push_to_hub and exported.verified is not False:
        from llmkit.export.card import push_to_hub as push
        from llmkit.rundir import RunDir

        exported.pushed = push(Path(run), exported.path, push_to_hub, private, RunDir(Path(run)).load_config().hub_token_env)
    return exported


def _export(run: str | Path, out: str | Path, format: str, dtype: str, merge_lora: bool, quant: str, overwrite: bool,
            verify: bool) -> Exported:
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.export.hf import export_hf, open_source

    run, out = Path(run), Path(out)
    if format not in ("hf", "gguf"):
        raise UsageError(f"unknown export format {format!r}", "", "use format='hf' or format='gguf'")
    with open_source(run) as src:
        if format == "gguf":
            from llmkit.export.gguf import export_gguf

            path = export_gguf(src, out, quant, overwrite)
            return Exported(path, "gguf", [path.name])
        tok = load_tokenizer(src)
        prompts = [tok.encode(p, add_special_tokens=False) or [tok.eos_token_id] for p in ("The", "A class is", "x = 1")]
        result = export_hf(run, out, dtype, merge_lora, overwrite, prompts=prompts, src=src)
    exported = Exported(out, "hf", result.files)
    if verify and result.dtype == "float32":
        from llmkit.export.verify import verify as run_verify

        exported.report = run_verify(run, out)
        exported.verified = exported.report.ok
    return exported


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


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 0, served_name: str | None = None,
          settings: Mapping[str, Any] | None = None, start_timeout_s: float = 600.0) -> Server:
    """Serve a run (its final model, with its config's serve and generate sections) or a model
    directory with llmkit's engine, in a background thread of this process; returns once it
    accepts requests. ``port=0`` picks a free port. ``settings``: serve-section keys to change
    (``{"max_batch_size": 8, "compile": True}``)."""
    import uvicorn

    from llmkit.config.schema import GenerateConfig, ServeConfig
    from llmkit.rundir import RunDir
    from llmkit.serve.server import build, ensure_serve_extra

    ensure_serve_extra()
    root = Path(model)
    run = RunDir(root)
    cfg = run.load_config() if run.config.exists() else None
    base = cfg.serve.model_dump() if cfg else {}
    serve_cfg = ServeConfig.model_validate({**base, **dict(settings or {}), "host": host, "port": port})
    if serve_cfg.engine != "llmkit":
        raise UsageError("llmkit.serve runs llmkit's own engine in this process", f"engine: {serve_cfg.engine}",
                         "use the CLI (`llmkit serve --engine vllm`) for vLLM")
    built = build(root, serve_cfg, cfg.generate if cfg else GenerateConfig(), served_name, note=logger.warning,
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
    bound = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://{host}:{bound}"
    logger.info("serving %s on %s (OpenAI API under /v1)", built.name, url)
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        built.state.draining = True  # readiness and new requests 503, as on SIGTERM
        end = time.monotonic() + serve_cfg.drain_timeout_s
        while (built.state.in_flight or built.engine.active or built.engine.queued) and time.monotonic() < end:
            time.sleep(0.05)
        server.should_exit = True
        thread.join(timeout=30)
        built.engine.close()

    return Server(url, built.name, stop)


def plan(config: RunConfig, devices: Sequence[str] | None = None, cloud: str = "any", spot: bool = False,
         budget_usd: float | None = None, deadline_hours: float | None = None, this_machine: bool = False) -> Plan:
    """Memory, time and cost of training ``config`` per (device, count), with recommendations
    (`llmkit plan`). ``this_machine`` measures this CPU (~3 s) and adds it as a candidate."""
    from llmkit.plan.recommend import make_plan

    local = None
    if this_machine:
        import os

        import torch

        from llmkit.device import resolve_precision
        from llmkit.plan.measure import measure_cpu_rates
        from llmkit.plan.recommend import LocalMachine

        precision = resolve_precision(config.train.precision, torch.device("cpu"))
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        local = LocalMachine("this-cpu", ram_gb, precision, measure_cpu_rates(precision))
    return make_plan(config, list(devices) if devices else None, cloud, spot, budget_usd, deadline_hours, local=local)


def plan_serving(config: RunConfig, concurrency: int = 1, tokens_per_s_per_user: float = 20.0,
                 context: int | None = None, prompt_tokens: int | None = None, devices: Sequence[str] | None = None,
                 cloud: str = "any", spot: bool = False, this_machine: bool = False) -> ServePlan:
    """What serving ``concurrency`` users at ``tokens_per_s_per_user`` needs and costs (`llmkit plan --serve`)."""
    from llmkit.plan.serving import LocalServer, local_fits, serve_plan

    n = context or config.model.max_position_embeddings
    prompt = prompt_tokens or max(1, n // 2)
    local = None
    if this_machine:
        import os

        from llmkit.plan.measure import measure_cpu_serving

        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        speed = (measure_cpu_serving(config, config.serve.dtype, sampled=config.generate.temperature > 0)
                 if local_fits(config, config.serve.dtype, ram_gb, concurrency, n) else None)
        local = LocalServer("this-cpu", ram_gb, config.serve.dtype, speed)
    return serve_plan(config, concurrency, tokens_per_s_per_user, n, prompt, list(devices) if devices else None,
                      cloud, spot, local)
