"""The stage commands are thin: each imports its stage's entry point, the config loader, the run
context and the errors, and nothing else of the library (the CLI's own option helpers aside).
Imports are read with ``ast``, those inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLI = Path(__file__).resolve().parents[2] / "src" / "llmkit" / "cli"
ALWAYS = {"llmkit.config.load", "llmkit.privacy.context", "llmkit.errors", "llmkit.version"}
ENTRY = {
    "prepare_cmd": "llmkit.data.prepare",
    "train_cmd": "llmkit.training.entry",
    "eval_cmd": "llmkit.eval.run",
    "export_cmd": "llmkit.exporting.entry",
    "serve_cmd": "llmkit.serving.entry",
    "plan_cmd": "llmkit.planning.entry",
    "launch_cmd": "llmkit.launching.entry",
    "studio_cmd": "llmkit.studio.entry",
}
# `plan --serve` has an entry of its own, with the server it times (planning sits below serving)
ALSO = {"plan_cmd": {"llmkit.serving.plan"}}


def llmkit_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llmkit")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("llmkit"):
            found.add(node.module or "")
    return {m for m in found if not m.startswith("llmkit.cli")}


@pytest.mark.parametrize("command", sorted(ENTRY))
def test_a_stage_command_imports_only_its_entry_point(command: str) -> None:
    extra = llmkit_imports(CLI / f"{command}.py") - ALWAYS - {ENTRY[command]} - ALSO.get(command, set())
    assert not extra, f"cli/{command}.py imports {sorted(extra)}: move that into {ENTRY[command]}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from llmkit.training.loop import train\n    import llmkit.errors\n")
    assert llmkit_imports(f) == {"llmkit.training.loop", "llmkit.errors"}
