"""The CLI's choice lists equal the values the owning modules accept, and --help shows them."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

from llmkit.cli import options
from llmkit.config.schema import PlanConfig, ServeConfig
from llmkit.registry import EXPORT_FORMATS, LAUNCH_TARGETS
from llmkit.launching.spec import WHATS
from llmkit.exporting.gguf import QUANTS
from llmkit.exporting.hf import DTYPES


def _values(enum: type) -> tuple[str, ...]:
    return tuple(m.value for m in enum)


def test_choices_equal_their_owners() -> None:
    assert _values(options.ExportDtype) == DTYPES
    assert _values(options.GgufQuant) == QUANTS
    assert _values(options.Cloud) == get_args(PlanConfig.model_fields["cloud"].annotation)
    assert _values(options.ServeEngine) == get_args(ServeConfig.model_fields["engine"].annotation)
    assert _values(options.ServeDtype) == get_args(ServeConfig.model_fields["dtype"].annotation)
    assert options.registry_option("LAUNCH_TARGETS", None, ("-t",), "").metavar == "|".join(LAUNCH_TARGETS)
    assert options.registry_option("EXPORT_FORMATS", None, ("-f",), "").metavar == "|".join(EXPORT_FORMATS)
    assert _values(options.LaunchWhat) == WHATS


def test_help_lists_allowed_values_and_completion() -> None:
    def help_of(*cmd: str) -> str:
        return subprocess.run([sys.executable, "-m", "llmkit", *cmd, "--help"], capture_output=True, text=True,
                              check=True).stdout

    assert "hf|gguf" in help_of("export") and "f32|f16|bf16|q8_0|q6_k|q5_k_m|q4_k_m|q4_0" in help_of("export")
    assert "any|aws|gcp|azure|lambda|runpod" in help_of("plan")
    assert "llmkit|vllm" in help_of("serve") and "fp32|bf16" in help_of("serve")
    assert "slurm|kubernetes|skypilot|docker" in help_of("launch") and "train|serve" in help_of("launch")
    assert "auto|never|PATH" in help_of("train")
    assert "--install-completion" in help_of()
