"""The typed result of a probe, and of a whole doctor run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["ok", "warn", "fail", "skip"]


class Finding(BaseModel):
    """One verdict: what was checked, how it went, and what to do about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_.-]*$")
    """Stable identifier of the check, e.g. `cpu`, `gpu.0`, `torch`."""
    status: Status
    """ok: fine; warn: works but worse than it could; fail: blocks llmkit; skip: not applicable."""
    summary: str
    """One line a person reads first."""
    detail: str = ""
    """Facts behind the verdict."""
    fix: str = ""
    """What to do (a command where there is one); empty when nothing needs doing."""
    facts: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    """Machine-readable facts the verdict was based on."""


class DoctorReport(BaseModel):
    """All findings of one `llmkit doctor` run."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    llmkit_version: str
    findings: list[Finding]

    @property
    def failed(self) -> bool:
        """True when any finding is a fail (doctor then exits non-zero)."""
        return any(f.status == "fail" for f in self.findings)

    def by_id(self, finding_id: str) -> Finding:
        """The finding with this id (KeyError if absent)."""
        for f in self.findings:
            if f.id == finding_id:
                return f
        raise KeyError(finding_id)
