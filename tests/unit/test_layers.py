"""The layer order of docs/architecture.md, pinned: no module imports a layer above its own.

Imports are read with ``ast`` (those inside functions too, as llmkit imports heavy packages
lazily). A package or module that no layer names fails the test until it is classified.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "llmkit"

LAYERS: list[tuple[str, set[str]]] = [  # top to bottom; a layer imports only layers below it
    ("python -m llmkit", {"__main__"}),
    ("the CLI: one thin module per command; the Python API", {"cli", "api"}),
    ("the whole chain on the embedded corpus", {"quickstart"}),
    ("stages that use a trained run, and launch", {"serve", "export", "launch"}),
    ("the training loop", {"train"}),
    ("loss, evaluator, lm-eval adapter", {"eval"}),
    ("decoding", {"generate"}),
    ("models", {"model"}),
    ("data: corpora, tokenizers, shards, batch providers", {"data"}),
    ("environment check", {"doctor"}),
    ("sizing: parameters, FLOPs, memory, time, cost", {"plan"}),
    ("the run report (HTML) from a run directory's files", {"report"}),
    ("the run directory", {"rundir"}),
    ("the config", {"config"}),
    ("privacy: PII detection, offline switches, sealed files and key rotation", {"privacy"}),
    ("Hugging Face Hub ids resolved to complete local snapshots", {"hub"}),
    ("device and precision policy, fault points, files, optional dependencies, packed weights",
     {"device", "faults", "fsutil", "optional", "packing"}),
    ("errors, version", {"errors", "__init__"}),
]
RANK = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str:
    """The top-level part of llmkit a dotted module name belongs to (``llmkit`` itself: __init__)."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, llmkit module) for every import of llmkit in a file, wherever it is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "llmkit"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "llmkit":
            if node.module == "llmkit":  # `from llmkit import faults` imports llmkit.faults
                found += [(node.lineno, f"llmkit.{a.name}" if (SRC / a.name).exists()
                           or (SRC / f"{a.name}.py").exists() else "llmkit") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def test_no_module_imports_a_layer_above_it() -> None:
    print("\nllmkit layers, top to bottom (each imports only layers below it):")
    for rank, (what, parts) in enumerate(LAYERS):
        print(f"  {rank + 1:2}. {', '.join(sorted(parts)):<40} {what}")
    unclassified, violations = set(), []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        part = rel.parts[0].removesuffix(".py") if len(rel.parts) == 1 else rel.parts[0]
        if part not in RANK:
            unclassified.add(part)
            continue
        for line, module in _imports(path):
            target = _part(module)
            if target == part:
                continue
            if target not in RANK:
                unclassified.add(target)
            elif RANK[target] <= RANK[part]:
                violations.append(f"{rel}:{line} ({part}) imports {module} ({target}), which is not below it")
    assert not unclassified, f"add these to a layer in LAYERS and docs/architecture.md: {sorted(unclassified)}"
    assert not violations, "\n".join(violations)


def test_the_layer_order_is_the_documented_one() -> None:
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = [line.split("|")[2].strip() for line in doc.splitlines() if line.startswith("| ") and line[2:3].isdigit()]
    assert listed == [", ".join(sorted(parts)) for _, parts in LAYERS]


def test_lower_layers_do_not_import_torch_at_module_level() -> None:
    """plan, config, doctor, device, rundir and errors work on a machine without torch (doctor says how
    to install it): torch is imported inside the functions that need it."""
    for part in ("plan", "config", "doctor", "device", "rundir", "errors", "optional"):
        for path in [*SRC.joinpath(part).rglob("*.py"), SRC / f"{part}.py"]:
            if not path.exists():
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
            assert not [n for n in names if n.split(".")[0] == "torch"], f"{path.relative_to(SRC)} imports torch at import time"
