"""Load a run config: YAML file, then documented environment variables, then `--set` overrides.

Precedence, lowest to highest: the file, the environment variables in ``ENV_OVERRIDES``, then
``--set a.b=c`` on the command line (the most explicit wins). Every problem is reported at
once, each with its key path, in one :class:`ConfigProblems` error.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmkit.config.schema import RunConfig
from llmkit.errors import ConfigError

MAX_CONFIG_BYTES = 1_048_576
"""A run config is a few KB; anything over 1 MiB is a mistake (or an attack), not a config."""

ENV_OVERRIDES: dict[str, str] = {
    "LLMKIT_OFFLINE": "privacy.offline",
    "LLMKIT_RUNS_ROOT": "runs_root",
    "LLMKIT_DEVICE": "train.device",
    "LLMKIT_PRECISION": "train.precision",
}
"""Environment variables that override config keys (documented in the README)."""

_FIX = "correct the keys above; `llmkit init --preset tiny example.yaml` writes a commented example"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (dotted key path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '(top level)'}: {self.message}"


class ConfigProblems(ConfigError):
    """All the problems of one config, found in one pass."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"{source}: {len(problems)} {noun} in the config",
            "\n".join(f"  {p}" for p in problems),
            _FIX,
        )


# --- YAML ---------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases (no "billion laughs") and without silently repeated keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases (*name) are not allowed in llmkit configs; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text with the strict loader; errors name the source, line and column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{source}: invalid YAML{where}",
            f"{exc.problem or exc}" + (f" ({exc.context})" if exc.context else ""),
            "fix the YAML syntax at that position",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML", str(exc), "fix the YAML syntax") from None
    except RecursionError:
        raise ConfigError(
            f"{source}: the YAML is nested too deeply to read",
            "a run config is a few levels deep",
            "flatten the file",
        ) from None


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a config file into a dict, refusing anything that is not a small YAML mapping."""
    p = Path(path)
    if not p.exists():
        near = sorted(x.name for x in (p.parent if str(p.parent) else Path(".")).glob("*.y*ml"))
        hint = f"YAML files next to it: {', '.join(near[:10])}" if near else "no YAML files there"
        raise ConfigError(
            f"config file not found: {p}", hint, "`llmkit init --preset tiny run.yaml` writes one"
        )
    if p.is_dir():
        raise ConfigError(f"{p} is a directory, not a config file", "", "pass the YAML file")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{p} is {size:,} bytes: too large for a config",
                f"the limit is {MAX_CONFIG_BYTES:,} bytes; a run config is a few KB",
                "check that this is the config file you meant",
            )
        raw = p.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"cannot read {p}", exc.strerror or str(exc), "check its permissions")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p} is not UTF-8 text", f"invalid byte at offset {exc.start}", "save it as UTF-8"
        ) from None
    data = parse_yaml(text, str(p))
    if data is None:
        raise ConfigError(
            f"{p} is empty", "a config needs at least `name:`", "`llmkit init` writes a full one"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}: the top level must be a mapping of keys",
            f"found a {type(data).__name__}",
            "start the file with `name: myrun` and the sections below it",
        )
    return data


# --- overrides ----------------------------------------------------------------------------

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its key path and YAML-typed value (``3``, ``true``, ``[1, 2]``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError(
            f"bad override {text[:200]!r}",
            "an override is KEY.PATH=VALUE, e.g. train.learning_rate=3e-4",
            "write it as --set section.key=value",
        )
    value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    return key.split("."), value


def apply_override(data: dict[str, Any], keys: list[str], value: Any, source: str) -> None:
    """Set ``data[k1][k2]... = value``, creating sections that are not in the file yet."""
    node = data
    for i, k in enumerate(keys[:-1]):
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"{source}: {'.'.join(keys[: i + 1])} is a value, not a section",
                f"cannot set {'.'.join(keys)} inside it",
                "check the key path with `llmkit config show`",
            )
        node = child
    node[keys[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, list[str], Any]]:
    """The documented environment overrides that are set, as (source, key path, value)."""
    found = []
    for var, key in ENV_OVERRIDES.items():
        if environ.get(var, "") != "":
            found.append((f"${var}", key.split("."), parse_yaml(environ[var], f"${var}")))
    return found


# --- validation ---------------------------------------------------------------------------


def _child_model(cls: type[BaseModel] | None, name: Any) -> type[BaseModel] | None:
    if cls is None or not isinstance(name, str) or name not in cls.model_fields:
        return None
    ann = cls.model_fields[name].annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _clean_path(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """Turn a pydantic loc into the user's key path, dropping union-member tags like 'int'.

    Returns the path and the model class that owns its last key (for "did you mean").
    """
    cls: type[BaseModel] | None = RunConfig
    owner: type[BaseModel] | None = RunConfig
    parts: list[str] = []
    for elem in loc:
        if cls is not None and isinstance(elem, str):
            owner = cls
            parts.append(elem)
            cls = _child_model(cls, elem)
        elif isinstance(elem, int):
            parts[-1:] = [f"{parts[-1]}[{elem}]"] if parts else [f"[{elem}]"]
            cls = None
        # else: a union member tag ("int", "literal['auto']") - not part of the user's path
    return ".".join(parts), owner


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean: {match[0]}?)" if match else ""


def _problem_message(err: Mapping[str, Any], owner: type[BaseModel] | None) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        names = owner.model_fields if owner is not None else []
        return f"unknown key{_did_you_mean(key, names)}"
    if kind == "missing":
        return "required key is missing"
    if msg.startswith(("Value error, ", "Assertion failed, ")):
        msg = msg.split(", ", 1)[1]
    if kind == "literal_error" and isinstance(err.get("input"), str):
        allowed = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        msg += _did_you_mean(err["input"], allowed)
    return msg


def _shown_input(err: Mapping[str, Any], path: str) -> str:
    """" (got ...)" for a wrong value, except where the value could be a secret or a section."""
    value = err.get("input")
    if err["type"] in ("missing", "extra_forbidden") or isinstance(value, dict):
        return ""
    if path.endswith(("_env", "_envs")) or "_envs[" in path:
        return ""  # whoever pasted a secret here must not see it echoed into logs
    shown = repr(value)
    return f" (got {shown[:80]}{'...' if len(shown) > 80 else ''})"


def validate_config(data: Mapping[str, Any], source: str = "config") -> RunConfig:
    """Validate a config mapping; every problem is reported at once in :class:`ConfigProblems`."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        grouped: dict[str, list[str]] = {}
        shown: dict[str, str] = {}
        for err in exc.errors():
            path, owner = _clean_path(tuple(err["loc"]))
            message = _problem_message(err, owner)
            if message not in grouped.setdefault(path, []):
                grouped[path].append(message)
            shown.setdefault(path, _shown_input(err, path))
        problems = [Problem(p, "; or ".join(m) + shown[p]) for p, m in grouped.items()]
        raise ConfigProblems(source, problems) from None


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Load and validate a run config.

    ``path`` (or ``base``, an already-read mapping) is the starting point; then the environment
    variables of ``ENV_OVERRIDES``; then each ``--set`` override in order. Loading has no side
    effects: the offline switches and the encryption key are the run context's
    (``llmkit.privacy.context``), which a command's entry builds from the config.
    """
    if path is not None:
        data = read_config_file(path)
        source = str(path)
    else:
        data = copy.deepcopy(dict(base or {}))
        source = "config"
    environ = os.environ if environ is None else environ
    for origin, keys, value in env_overrides(environ):
        apply_override(data, keys, value, origin)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value, f"--set {text[:100]}")
    return validate_config(data, source)


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML; `load_config` of this text gives back an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
