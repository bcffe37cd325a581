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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.config.schema import RunConfig
from llmkit.data.prepare import PrepareResult
from llmkit.exporting.base import Exported
from llmkit.launching.entry import Launched
from llmkit.planning.recommend import Plan
from llmkit.planning.serving import ServePlan
from llmkit.serving.entry import Server
from llmkit.training.loop import TrainResult

__all__ = ["load_config", "prepare", "train", "evaluate", "export", "verify", "launch", "serve", "plan", "plan_serving",
           "Evaluation", "Exported", "Launched", "Server", "PrepareResult", "TrainResult", "Plan", "ServePlan",
           "RunConfig"]

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
    from llmkit.training.loop import train as _train

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


def export(run: str | Path, out: str | Path, format: str = "hf", dtype: str = "float32", merge_lora: bool = True,
           quant: str = "f32", overwrite: bool = False, verify: bool = True, push_to_hub: str | None = None,
           private: bool = False, decrypt: bool = False, log: Log | None = None) -> Exported:
    """Export the run's model (`llmkit export`): a Hugging Face directory (``format="hf"``,
    ``dtype``, merged LoRA or the adapter), a GGUF file (``format="gguf"``, ``quant``) or another
    registered format. A float32 HF export is verified against the run's model unless
    ``verify=False``. An encrypted run is exported only with ``decrypt``. ``push_to_hub="org/name"``
    then uploads it with a model card (not when verification failed)."""
    from llmkit.exporting.entry import export as entry

    return entry(run, out, format, dtype, merge_lora, quant, overwrite, verify, decrypt, push_to_hub, private,
                 log=_log(log))


def verify(run: str | Path, exported: str | Path | None = None, endpoint: str | None = None,
           endpoint_model: str | None = None, tolerance: float = 1e-4, api_key: str | None = None,
           gguf: str | Path | None = None, bf16: bool = False) -> Any:
    """`llmkit verify`: the run's model against its export (default its final/) in plain
    transformers, an OpenAI-compatible ``endpoint`` and a ``gguf`` file in llama.cpp; the report
    (``report.ok``, ``report.checks``)."""
    from llmkit.exporting.entry import verify_export

    return verify_export(run, exported, endpoint, endpoint_model, tolerance, api_key, gguf, bf16)[0]


def launch(config: RunConfig, target: str | None = None, what: str = "train", out: str | Path | None = None,
           overwrite: bool = False) -> Launched:
    """Render the run for a launch target (`llmkit launch`, default ``launch.target``) into ``out``;
    ``result.start(submit=True, echo=print)`` then submits it as the CLI's ``--submit`` does."""
    from llmkit.launching.entry import launch as entry

    return entry(config, target, what, out, overwrite)


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 0, served_name: str | None = None,
          settings: Mapping[str, Any] | None = None, start_timeout_s: float = 600.0) -> Server:
    """Serve a run (its final model, with its config's serve and generate sections) or a model
    directory with llmkit's engine, in a background thread of this process; returns once it
    accepts requests. ``port=0`` picks a free port. ``settings``: serve-section keys to change
    (``{"max_batch_size": 8, "compile": True}``)."""
    from llmkit.serving.entry import start

    return start(model, host, port, served_name, settings, start_timeout_s)


def plan(config: RunConfig, devices: Sequence[str] | None = None, cloud: str | None = None, spot: bool | None = None,
         budget_usd: float | None = None, deadline_hours: float | None = None, this_machine: bool = False) -> Plan:
    """Memory, time and cost of training ``config`` per (device, count), with recommendations
    (`llmkit plan`): within the config's ``plan`` section, with the arguments given here taking
    its place. ``this_machine`` measures this CPU (~3 s) and adds it as a candidate."""
    from llmkit.planning.entry import plan_training

    return plan_training(_with_plan(config, cloud=cloud, spot=spot, budget_usd=budget_usd,
                                    deadline_hours=deadline_hours), list(devices) if devices else None,
                         this_machine, note=logger.info)


def plan_serving(config: RunConfig, concurrency: int | None = None, tokens_per_s_per_user: float | None = None,
                 context: int | None = None, prompt_tokens: int | None = None, devices: Sequence[str] | None = None,
                 cloud: str | None = None, spot: bool | None = None, this_machine: bool = False) -> ServePlan:
    """What serving ``concurrency`` users (default ``serve.max_batch_size``) at
    ``tokens_per_s_per_user`` (default 20) needs and costs (`llmkit plan --serve`)."""
    from llmkit.serving.plan import plan_serving as entry

    return entry(_with_plan(config, cloud=cloud, spot=spot), concurrency, tokens_per_s_per_user, context, prompt_tokens,
                 list(devices) if devices else None, this_machine, note=logger.info)


def _with_plan(config: RunConfig, **values: Any) -> RunConfig:
    """``config`` with the given ``plan`` keys set (None: keep the config's)."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return config
    return config.model_validate({**config.model_dump(), "plan": {**config.plan.model_dump(), **given}})
