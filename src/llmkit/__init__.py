"""llmkit: from a bare machine to a trained, evaluated and served language model.

The Python API (``llmkit.api``): ``llmkit.load_config``, ``prepare``, ``train``, ``evaluate``,
``export``, ``serve``, ``plan`` and ``plan_serving``, loaded on first use so that
``import llmkit`` stays light. ``train``, ``export``, ``serve`` and ``plan`` are also the names of
subpackages: calling one (``llmkit.train(cfg)``) calls the API function, and every import of the
subpackage (``import llmkit.train.loop as loop``, ``from llmkit.train import loop``) works as usual.
"""

import importlib
import importlib.util
import sys
import types
from typing import Any

__version__ = "0.1.0"

API = ("load_config", "prepare", "train", "evaluate", "export", "serve", "plan", "plan_serving")


class ApiPackage(types.ModuleType):
    """A subpackage that is also an API function: calling it calls ``llmkit.api.<its name>``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        function = getattr(importlib.import_module("llmkit.api"), self.__name__.rsplit(".", 1)[1])
        return function(*args, **kwargs)


def api_package(name: str) -> None:
    """Make the subpackage ``name`` (its ``__name__``) callable as its API function."""
    sys.modules[name].__class__ = ApiPackage


def __getattr__(name: str) -> Any:
    if name in API:  # the top layer, on demand (subpackages of these names become callable on import)
        if importlib.util.find_spec(f"llmkit.{name}") is not None:
            return importlib.import_module(f"llmkit.{name}")
        return getattr(importlib.import_module("llmkit.api"), name)
    raise AttributeError(f"module 'llmkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
