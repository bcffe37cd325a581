"""The real `llmkit` entry point, in a subprocess: init, validate, show, errors, help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


def test_version_names_the_libraries_and_extras(cli) -> None:
    from importlib.metadata import version

    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("llmkit ")
    lines = out.stdout.splitlines()
    assert f"torch {version('torch')}" in lines and f"transformers {version('transformers')}" in lines
    assert f"[lora] peft {version('peft')}" in lines  # the test extras install peft
    assert "[serve.engine vllm] not installed" in lines or any(line.startswith("[serve.engine vllm] vllm ") for line in lines)


def test_license_file_matches_the_package_metadata() -> None:
    import re

    root = Path(__file__).resolve().parents[2]
    assert re.search(r'^license = "Apache-2.0"$', (root / "pyproject.toml").read_text(), re.M)
    text = (root / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_init_then_validate(cli, tmp_path: Path) -> None:
    out = cli("init", "--preset", "tiny", "run.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "run.yaml").read_text()
    assert "# Peak learning rate." in text  # field docstrings become comments
    out = cli("config", "validate", "run.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "is valid" in out.stdout


def test_init_refuses_to_overwrite(cli, tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("mine\n")
    out = cli("init", "run.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "already exists" in out.stderr
    assert (tmp_path / "run.yaml").read_text() == "mine\n"


def test_validate_reports_four_problems_without_traceback(cli, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "model:\n  hidden_size: big\ntrain:\n  micro_batch_size: -4\n  learning_rat: 0.001\n"
    )
    out = cli("config", "validate", "bad.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert "4 problems" in out.stderr
    for path in ("name", "model.hidden_size", "train.micro_batch_size", "train.learning_rat"):
        assert f"  {path}:" in out.stderr
    assert out.stderr.count("did you mean") == 1 and "did you mean: learning_rate?" in out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


def test_debug_shows_traceback(cli, tmp_path: Path) -> None:
    out = cli("--debug", "config", "validate", "missing.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" in out.stderr


def test_bad_files_exit_2(cli, tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "broken.yaml").write_text("name: x\n  bad: indent\n")
    cases = {"missing.yaml": "not found", ".": "is a directory", "empty.yaml": "empty",
             "broken.yaml": "line 2"}
    for arg, expected in cases.items():
        out = cli("config", "validate", arg, cwd=tmp_path)
        assert out.returncode == 2, (arg, out.stderr)
        assert expected in out.stderr and "Traceback" not in out.stderr


def test_show_applies_overrides(cli, tmp_path: Path) -> None:
    cli("init", "run.yaml", cwd=tmp_path)
    out = cli("config", "show", "run.yaml", "--set", "train.max_steps=9", cwd=tmp_path,
              env={"LLMKIT_PRECISION": "fp32"})
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["train"]["max_steps"] == 9 and shown["train"]["precision"] == "fp32"


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from llmkit.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
        "assert 'transformers' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
