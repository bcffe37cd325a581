"""llmkit: from a bare machine to a trained, evaluated and served language model.

The Python API: ``llmkit.load_config``, ``prepare``, ``train``, ``evaluate``, ``export``,
``verify``, ``launch``, ``serve``, ``plan`` and ``plan_serving`` are the plain functions of
``llmkit.api``, loaded on first use so that ``import llmkit`` stays light. The stages' own
packages have other names (``llmkit.training``, ``llmkit.exporting``, ``llmkit.serving``,
``llmkit.planning``), so an import of one never shadows an API function.
"""

import importlib
from typing import Any

from llmkit.version import __version__

__all__ = ["__version__"]

API = ("load_config", "prepare", "train", "evaluate", "export", "verify", "launch", "serve", "plan",
       "plan_serving")


def __getattr__(name: str) -> Any:
    if name in API:  # the top layer, on demand
        return getattr(importlib.import_module("llmkit.api"), name)
    raise AttributeError(f"module 'llmkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
