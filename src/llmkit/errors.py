"""The errors llmkit raises for its users.

Every error a user can cause says what went wrong (``summary``), why (``detail``) and what
to do next (``fix``). The CLI prints them without a traceback and exits with the class's
``exit_code``: 2 for config and usage, 3 for the environment, 1 for runtime failures.
"""

from __future__ import annotations


class LlmkitError(Exception):
    """Base class: a problem the user can act on."""

    exit_code: int = 1

    def __init__(self, summary: str, detail: str = "", fix: str = "") -> None:
        if not summary:
            raise ValueError("LlmkitError needs a summary")
        super().__init__(summary)
        self.summary = summary
        self.detail = detail
        self.fix = fix

    def __str__(self) -> str:
        parts = [self.summary]
        if self.detail:
            parts.append(self.detail)
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return "\n".join(parts)

    def render(self) -> str:
        """The message the CLI prints: summary, then detail and fix when present."""
        return f"error: {self}"


class ConfigError(LlmkitError):
    """The config file, an override or a command-line value is wrong (exit 2)."""

    exit_code = 2


class UsageError(LlmkitError):
    """A command was called in a way that cannot work (exit 2)."""

    exit_code = 2


class EnvironmentProblem(LlmkitError):
    """The machine lacks something the command needs: a package, a device, disk (exit 3)."""

    exit_code = 3


class RunFailure(LlmkitError):
    """Something failed while doing the work: training, saving, serving (exit 1)."""

    exit_code = 1
