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
    ("the package: `llmkit.train(...)` and the other API names, loaded on first use", {"__init__"}),
    ("the CLI: one thin module per command; the Python API", {"cli", "api"}),
    ("the whole chain on the embedded corpus; the studio (web app over a workspace's runs)", {"quickstart", "studio"}),
    ("stages that use a trained run, and launch", {"serving", "exporting", "launching"}),
    ("the training loop", {"training"}),
    ("the evaluator, `llmkit eval`, lm-eval adapter, canaries", {"eval"}),
    ("training objectives: batches, loss, metrics, what they refuse", {"objectives"}),
    ("environment check", {"doctor"}),
    ("sizing: parameters, FLOPs, memory, time, cost; this machine measured on the server's own code",
     {"planning"}),
    ("decoding", {"generate"}),
    ("models", {"model"}),
    ("data: corpora, tokenizers, shards, batch providers", {"data"}),
    ("the run report (HTML) from a run directory's files", {"report"}),
    ("the run directory", {"rundir"}),
    ("the config", {"config"}),
    ("privacy: PII detection, offline switches, sealed files and key rotation", {"privacy"}),
    ("Hugging Face Hub ids resolved to complete local snapshots", {"hub"}),
    ("device and precision policy, fault points, files, optional dependencies, packed weights",
     {"device", "faults", "fsutil", "optional", "packing", "registry", "wquant"}),
    ("errors, version", {"errors", "version"}),
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
        elif isinstance(node, ast.Call) and _imported_name(node):
            found.append((node.lineno, _imported_name(node)))
    return found


def _imported_name(call: ast.Call) -> str | None:
    """The llmkit module of ``importlib.import_module("llmkit...")`` / ``import_module(...)`` /
    ``__import__(...)`` called with a literal name (None for any other call)."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.split(".")[0] == "llmkit":
        return arg.value
    return None


def test_dynamic_imports_are_followed() -> None:
    """A literal ``importlib.import_module("llmkit.x")`` counts as an import of llmkit.x."""
    tree = ast.parse('import importlib\nimportlib.import_module("llmkit.training.loop")\n__import__("llmkit.api")\n'
                     'importlib.import_module(name)\nimportlib.import_module("json")\n')
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert [_imported_name(c) for c in calls] == ["llmkit.training.loop", "llmkit.api", None, None]


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
    for part in ("planning", "config", "doctor", "device", "rundir", "errors", "optional"):
        for path in [*SRC.joinpath(part).rglob("*.py"), SRC / f"{part}.py"]:
            if not path.exists():
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
            assert not [n for n in names if n.split(".")[0] == "torch"], f"{path.relative_to(SRC)} imports torch at import time"
