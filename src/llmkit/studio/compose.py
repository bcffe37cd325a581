"""The New-run form: a preset and a few fields composed into a config's YAML, that YAML validated
with llmkit's own messages, and the checks the studio adds (the run stays in the workspace)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import re

import yaml

from llmkit.config.load import ConfigProblems, parse_yaml, validate_config
from llmkit.config.presets import list_presets, load_preset
from llmkit.config.schema import RunConfig
from llmkit.errors import ConfigError, LlmkitError
from llmkit.studio.workspace import RUNS, Refused, Workspace

TASK_DATA = {"sft": "sft_path", "classify": "classify_path", "preference": "preference_path", "rl": "prompts_path"}
"""The data key each task reads its file from (pretraining: data.source text or dir, data.path)."""
NAME_OF_UPLOAD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
FIELDS = {"max_steps": "train.max_steps", "learning_rate": "train.learning_rate",
          "global_batch_size": "train.global_batch_size", "sequence_length_tokens": "train.sequence_length_tokens",
          "lora_r": "model.lora.r"}


def presets() -> list[str]:
    return list(list_presets())


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise Refused(f"{dotted} cannot be set: {key} is not a section")
    node[last] = value


def compose(ws: Workspace, form: dict[str, Any]) -> str:
    """The YAML of the config the form describes: the preset, then each field filled in."""
    preset = form.get("preset") or "tiny"
    data = load_preset(str(preset))
    if form.get("name"):
        data["name"] = str(form["name"])
    data["runs_root"] = RUNS
    if form.get("base_model"):
        _set(data, "model.from_pretrained", str(form["base_model"]))
    if form.get("task"):
        _set(data, "train.task", str(form["task"]))
    if form.get("lora") is not None:
        _set(data, "model.lora.enabled", bool(form["lora"]))
    for key, dotted in FIELDS.items():
        if form.get(key) not in (None, ""):
            _set(data, dotted, form[key])
    if form.get("data_path"):
        path = ws.inside(str(form["data_path"]), must_exist=True)
        task = data.get("train", {}).get("task", "pretrain")
        if task == "pretrain":
            _set(data, "data.source", "dir" if path.is_dir() else "text")
            _set(data, "data.path", str(form["data_path"]))
        else:
            _set(data, f"data.{TASK_DATA[task]}", str(form["data_path"]))
    return f"# written by llmkit studio from the preset {preset}\n" + yaml.safe_dump(data, sort_keys=False)


def problems_of(error: LlmkitError) -> list[dict[str, str]]:
    if isinstance(error, ConfigProblems):
        return [{"path": p.path, "message": p.message} for p in error.problems]
    return [{"path": "", "message": str(error)}]


def check(ws: Workspace, text: str) -> RunConfig:
    """The config of ``text``, validated by llmkit, then held to the workspace: runs under its
    runs/, every data file inside it. Raises ConfigError (with problems) or Refused."""
    data = parse_yaml(text, "config")
    if not isinstance(data, dict):
        raise ConfigError("the config is not a mapping", "", "start from a preset")
    cfg = validate_config(data, "config")
    if Path(cfg.runs_root) != Path(RUNS):
        raise Refused(f"runs_root is {cfg.runs_root!r}", "the studio keeps runs in its workspace's runs/",
                      f"set runs_root: {RUNS}")
    ws.run(cfg.name, must_exist=False)  # a plain folder name
    d = cfg.data
    for value in (cfg.model.from_pretrained, getattr(cfg.tokenizer, "path", None), d.path, d.sft_path, d.classify_path, d.preference_path, d.prompts_path,
                  *(getattr(m, "path", None) for m in d.mix)):
        if value and not _hub_id(ws, value):
            ws.inside(value, must_exist=True)
    return cfg


def _hub_id(ws: Workspace, value: str) -> bool:
    """A Hub dataset id (org/name, no such file in the workspace) rather than a path."""
    return (value.count("/") == 1 and not value.startswith((".", "/", "~")) and ".." not in value
            and not Path(value).suffix and not (ws.root / value).exists() and not (ws.root / value).is_symlink()
            and not (ws.root / value.split("/")[0]).exists())


def validate(ws: Workspace, text: str) -> dict[str, Any]:
    try:
        cfg = check(ws, text)
    except LlmkitError as e:
        return {"ok": False, "problems": problems_of(e)}
    return {"ok": True, "problems": [], "name": cfg.name, "task": cfg.train.task}
