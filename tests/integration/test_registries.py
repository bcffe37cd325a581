"""The registries: a launch target and an export format added in-process (one module, one
registry line) run through the CLI's own main function, in this process; unknown names are
refused with the registered ones listed."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmkit import registry
from llmkit.cli.main import main
from llmkit.config.load import load_config
from llmkit.errors import ConfigError
from llmkit.exporting.base import ExportFormat, Exported, ExportRequest
from llmkit.launching.base import Target, main_file
from llmkit.training.loop import train

from .training.helpers import make_run


@dataclass
class Report:
    ok: bool
    checks: list[str]


class ListFormat(ExportFormat):
    """Writes the names of final/'s files, one a line; verifies that each is still there."""

    name = "listing"

    def export(self, request: ExportRequest) -> Exported:
        names = sorted(p.name for p in request.src.iterdir())
        request.out.write_text("\n".join(names) + "\n")
        return Exported(request.out, self.name, [request.out.name], {"entries": len(names)})

    def verify(self, run: Path, exported: Exported) -> Any:
        listed = exported.path.read_text().split()
        return Report(all((run / "final" / n).exists() for n in listed), listed)


class ScriptTarget(Target):
    """A shell script that runs the job's command on this machine."""

    name = "script"
    title = "Script"
    multi_node = False

    def render(self, spec: Any) -> dict[str, str]:
        return {"job.sh": " ".join(spec.train_args(None, "localhost:29400")) + "\n"}

    def submit(self, spec: Any, folder: Path, files: dict[str, str], submit: bool, echo: Any) -> None:
        echo(f"start: sh {folder / main_file(files)}")


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    for module_name, attr, value in (("llmkit_test_listing", "FORMAT", ListFormat()),
                                     ("llmkit_test_script", "TARGET", ScriptTarget())):
        module = types.ModuleType(module_name)
        setattr(module, attr, value)
        monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.setitem(registry.EXPORT_FORMATS, "listing", "llmkit_test_listing")
    monkeypatch.setitem(registry.LAUNCH_TARGETS, "script", "llmkit_test_script")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI's main function, in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


def test_a_registered_export_format_runs_through_the_cli(tmp_path: Path, registered: None,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_run(tmp_path, train={"max_steps": 2, "eval_every_steps": 2})
    run = train(load_config(cfg, environ={}), log=lambda _: None).run_dir
    code, out, err = cli(capsys, "export", str(run), "--format", "listing", "--out", str(tmp_path / "files.txt"))
    assert code == 0, err
    assert "config.json" in (tmp_path / "files.txt").read_text().split()
    assert f"wrote {tmp_path / 'files.txt'}: files.txt" in out
    code, out, _ = cli(capsys, "export", str(run), "--format", "listing", "--out", str(tmp_path / "j.txt"), "--json")
    assert code == 0 and '"entries"' in out and '"ok": true' in out
    code, _, err = cli(capsys, "export", str(run), "--format", "nope", "--out", str(tmp_path / "x"))
    assert code == 2 and "'nope' is not one of 'hf', 'gguf', 'listing'" in err


def test_a_registered_launch_target_runs_through_the_cli(tmp_path: Path, registered: None,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_run(tmp_path, prepared=False)
    out_dir = tmp_path / "launch"
    code, out, err = cli(capsys, "launch", "--config", str(cfg), "--target", "script", "--out", str(out_dir))
    assert code == 0, err
    assert (out_dir / "job.sh").read_text().startswith("llmkit train --config")
    assert yaml.safe_load((out_dir / "run.yaml").read_text())["launch"]["target"] == "script"
    assert f"start: sh {out_dir / 'job.sh'}" in out
    # the config accepts the new name as launch.target; its traits apply (one machine)
    code, _, err = cli(capsys, "launch", "--config", str(cfg), "--set", "launch.target=script", "--set",
                       "launch.nodes=2", "--out", str(tmp_path / "two"))
    assert code == 2 and "a script run is one machine" in err


def test_unregistered_names_are_refused_where_the_user_gives_them(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_run(tmp_path, prepared=False)
    with pytest.raises(ConfigError, match="'script' is not a launch target; registered: slurm, kubernetes"):
        load_config(cfg, ["launch.target=script"], environ={})
    code, _, err = cli(capsys, "launch", "--config", str(cfg), "--target", "script")
    assert code == 2 and "'script' is not one of 'slurm'" in err
