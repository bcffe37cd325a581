"""The run directory, the contract between stages: every path in it is named here, once.

```
runs/<name>/
  config.yaml  manifest.json  tokenizer/  data/ (train.bin, val.bin, meta.json; sft/; classify/; preference/)
  reference/ (a preference run's precomputed reference log-probabilities)
  checkpoints/step-NNNNNN/  metrics.jsonl  tensorboard/  final/  eval.json  report.html
```

A stage that cannot use a run directory says which file is missing and which command makes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.config.load import load_config
from llmkit.config.schema import GenerateConfig, RunConfig
from llmkit.errors import UsageError


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created by naming them)."""

    root: Path

    @classmethod
    def of(cls, config: RunConfig, run_dir: str | Path | None = None) -> RunDir:
        """The run directory of a config: ``run_dir`` when given, else ``<runs_root>/<name>``."""
        return cls(Path(run_dir) if run_dir is not None else Path(config.runs_root) / config.name)

    @property
    def config(self) -> Path:
        """The resolved config the run was trained with (no secrets)."""
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def data(self) -> Path:
        """Pretraining shards (train.bin, val.bin, meta.json); SFT and classification data below it."""
        return self.root / "data"

    def task_data(self, task: str) -> Path:
        """Where `prepare` writes a task's data: data/ (pretrain), data/sft/, data/classify/, data/preference/."""
        return self.data if task == "pretrain" else self.data / task

    @property
    def reference(self) -> Path:
        """A preference run's reference log-probabilities, computed before step 1 ({train,val}.npy, meta.json)."""
        return self.root / "reference"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def final(self) -> Path:
        """The trained model as a plain Hugging Face directory."""
        return self.root / "final"

    @property
    def eval_results(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_samples(self) -> Path:
        """The eval samples of an encrypted run (sealed; eval.json then holds only metrics)."""
        return self.root / "eval_samples.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def quickstart_summary(self) -> Path:
        return self.root / "quickstart.json"

    def load_config(self) -> RunConfig:
        """The run's resolved config as a typed ``RunConfig`` (environment overrides are not applied:
        it is what the run was trained with)."""
        if not self.config.exists():
            raise UsageError(f"{self.root} is not a run directory (no config.yaml)",
                             "config.yaml is written by `llmkit train`",
                             "pass runs/<name> made by `llmkit train`, or run `llmkit quickstart`")
        return load_config(self.config, environ={})

    def run_context(self, environ: Any = None) -> Any:
        """The run context (``llmkit.privacy.context``) this run's files open with: its config's key
        and offline mode; a plain one for a directory that is not a run (no config.yaml)."""
        from llmkit.privacy.context import RunContext

        if not self.config.exists():
            return RunContext.plain()
        cfg = self.load_config()
        return RunContext.of(cfg.privacy.encryption_key_env, cfg.privacy.offline, environ)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl (none when the run has not logged yet)."""
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]


def generate_defaults(model_path: str | Path) -> GenerateConfig:
    """The sampling defaults for a model: its run's ``generate`` section when ``model_path`` is a
    run directory (or the ``final/`` inside one), else the built-in defaults."""
    p = Path(model_path)
    for candidate in (p, p.parent if p.name == "final" else None):
        if candidate is not None and RunDir(candidate).config.exists():
            return RunDir(candidate).load_config().generate
    return GenerateConfig()
