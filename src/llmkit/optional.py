"""Optional dependencies: import one, or say which llmkit extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from llmkit.errors import EnvironmentProblem


def require(module: str, extra: str, what: str, otherwise: str = "") -> ModuleType:
    """Import ``module``; if it is missing, raise an error that names ``what`` needs it and the
    exact install command (``pip install 'llmkit[extra]'``), plus ``otherwise`` (another way out)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        fix = f"pip install 'llmkit[{extra}]'" + (f", {otherwise}" if otherwise else "")
        raise EnvironmentProblem(f"{what} needs the {module.split('.')[0]} package", f"it comes with the '{extra}' extra",
                                 fix) from None
