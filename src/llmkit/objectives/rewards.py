"""The rewards of an RL run (``train.rl.rewards``): built-ins by name, user functions by
``module:function``; each answer's reward is their weighted sum.

A reward function gets the prompt (as rendered text), the completion (the sampled answer's text)
and the example (the prompt's row of the data, with every field it had: ``answer``, ``asserts``,
...) and returns a float. Built-ins also see how many tokens the answer has and whether it ended
by itself (its end-of-turn token) or was cut at ``max_new_tokens``.

User functions come only from the files named in ``train.rl.reward_files``, copied into the run
(``rewards/``) by ``prepare``: a resume or a launched job runs the code the run started with. An
exception or a value that is not a finite number ends the run with the function's name and the
example: a reward that silently became 0 would train toward the wrong thing.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.config.schema import RewardConfig, RlConfig
from llmkit.errors import ConfigError, RunFailure

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


@dataclass(frozen=True)
class Answer:
    """One sampled answer, as the rewards see it."""

    prompt: str
    completion: str
    example: dict[str, Any]
    tokens: int
    finished: bool
    """It ended with its end-of-turn token (not cut at max_new_tokens)."""


def _field(example: dict[str, Any], key: str, reward: str) -> Any:
    if key not in example:
        raise KeyError(f"the {reward} reward reads the example's {key!r} field, which this example lacks")
    return example[key]


def _normal(text: str) -> str:
    return text.strip().replace(",", "").rstrip(".").strip().lower()


def exact_match(a: Answer, spec: RewardConfig, rl: RlConfig) -> float:
    """1 when the answer extracted from the completion equals the example's ``answer``."""
    want = str(_field(a.example, "answer", "exact_match"))
    if spec.pattern:
        m = re.search(spec.pattern, a.completion)
        got = (m.group(1) if m and m.groups() else m.group(0)) if m else None
    else:
        found = _NUMBER.findall(a.completion)
        got = found[-1] if found else None
    if got is None:
        return 0.0
    try:
        return float(math.isclose(float(_normal(got)), float(_normal(want)), rel_tol=0, abs_tol=1e-9))
    except ValueError:
        return float(_normal(got) == _normal(want))


def regex(a: Answer, spec: RewardConfig, rl: RlConfig) -> float:
    """1 when the completion contains a match of ``pattern``."""
    return float(re.search(spec.pattern or "", a.completion) is not None)


def contains(a: Answer, spec: RewardConfig, rl: RlConfig) -> float:
    """1 when the completion contains the example's ``answer`` text, ignoring case."""
    return float(str(_field(a.example, "answer", "contains")).casefold() in a.completion.casefold())


def length(a: Answer, spec: RewardConfig, rl: RlConfig) -> float:
    """1 when the answer ended by itself with between min_tokens and max_tokens tokens."""
    top = spec.max_tokens if spec.max_tokens is not None else rl.max_new_tokens
    return float(a.finished and spec.min_tokens <= a.tokens <= top)


def program_of(completion: str, asserts: Any) -> str:
    """The script ``python_asserts`` runs: the answer's code (its first fenced block, or the whole
    text), then the example's asserts (a string or a list of them)."""
    fenced = _FENCE.search(completion)
    code = fenced.group(1) if fenced else completion
    tests = asserts if isinstance(asserts, str) else "\n".join(str(t) for t in asserts)
    return code + "\n\n" + tests + "\n"


def python_asserts(a: Answer, spec: RewardConfig, rl: RlConfig) -> float:
    """1 when the answer's code passes the example's ``asserts`` (sandboxed, within the limits)."""
    from llmkit.objectives import sandbox

    script = program_of(a.completion, _field(a.example, "asserts", "python_asserts"))
    sandboxed = sandbox.available() is None
    return float(sandbox.run(script, spec.timeout_s, spec.memory_mb, sandboxed).passed)


BUILTINS: dict[str, Callable[[Answer, RewardConfig, RlConfig], float]] = {
    "exact_match": exact_match, "regex": regex, "contains": contains, "length": length,
    "python_asserts": python_asserts,
}


def check_sandbox(rl: RlConfig) -> None:
    """Refuse python_asserts where the sandbox does not work, unless allowed to run without it."""
    from llmkit.objectives import sandbox

    for spec in rl.rewards:
        if spec.function == "python_asserts" and not spec.allow_unsandboxed and (why := sandbox.available()):
            raise ConfigError("the python_asserts reward cannot sandbox the answers' code on this machine", why,
                              "run where unprivileged user namespaces work (Linux with unshare), or set "
                              "allow_unsandboxed: true on that reward to run the code with resource limits only")


def _load_module(path: Path, expected: str | None) -> Any:
    """Execute a reward file (plain or sealed) as a module, after checking it is the file prepare
    copied (its sha256 in data/rl/meta.json)."""
    import hashlib
    import types

    from llmkit.privacy import crypto

    if not path.exists():
        raise ConfigError(f"the reward file {path.name} is not in the run's data/rl/rewards/",
                          "prepare copies train.rl.reward_files into the run", "run llmkit prepare")
    source = crypto.read_bytes(path)
    if expected is not None and hashlib.sha256(source).hexdigest() != expected:
        raise ConfigError(f"the run's copy of {path.name} changed since prepare", "a resume must run the reward code "
                          "the run started with", "run llmkit prepare again (a new run) or restore the file")
    key = f"llmkit_rewards.{path.stem}"
    module = types.ModuleType(key)
    module.__file__ = str(path)
    sys.modules[key] = module
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - opted in: allow_user_rewards
    return module


def _user_function(spec: str, rewards_dir: Path, hashes: dict[str, str]) -> Callable[..., Any]:
    module, _, name = spec.partition(":")
    files = {Path(n).stem: n for n in hashes}
    if module not in files:
        raise ConfigError(f"reward {spec!r}: no file in train.rl.reward_files defines module {module!r}",
                          f"the run's reward files: {', '.join(sorted(hashes)) or 'none'}",
                          f"add {module}.py to train.rl.reward_files and run llmkit prepare again")
    loaded = _load_module(rewards_dir / files[module], hashes[files[module]])
    fn = getattr(loaded, name, None)
    if not callable(fn):
        raise ConfigError(f"reward {spec!r}: {files[module]} has no function {name!r}", "",
                          "name a function defined at the file's top level")
    return fn


class Rewards:
    """The run's rewards, ready to score answers. ``rewards_dir``: the run's copies of the user
    reward files; ``hashes``: their sha256 by file name, as prepare recorded them."""

    def __init__(self, rl: RlConfig, rewards_dir: Path | None = None, hashes: dict[str, str] | None = None):
        self.rl = rl
        self.names = [s.function for s in rl.rewards]
        self.fns: list[Callable[[Answer], float]] = []
        for spec in rl.rewards:
            if spec.function in BUILTINS:
                builtin = BUILTINS[spec.function]
                self.fns.append(lambda a, b=builtin, s=spec: b(a, s, rl))
            else:
                if not rl.allow_user_rewards or rewards_dir is None:
                    raise ConfigError(f"reward {spec.function!r} is user code", "user rewards are opt-in",
                                      "set train.rl.allow_user_rewards: true and list its file in reward_files")
                user = _user_function(spec.function, rewards_dir, hashes or {})
                self.fns.append(lambda a, u=user: u(a.prompt, a.completion, a.example))

    def score(self, answers: list[Answer]) -> tuple[list[float], dict[str, list[float]]]:
        """(each answer's weighted total, each reward's own values). Sandboxed rewards run in
        parallel threads (their work is in subprocesses)."""
        per: dict[str, list[float]] = {}
        for k, (spec, fn) in enumerate(zip(self.rl.rewards, self.fns)):
            label = f"{spec.function}" if self.names.count(spec.function) == 1 else f"{spec.function}#{k}"
            if spec.function == "python_asserts" and len(answers) > 1:
                with ThreadPoolExecutor(max_workers=8) as pool:
                    values = list(pool.map(lambda a, f=fn, s=spec: self._one(f, s.function, a), answers))
            else:
                values = [self._one(fn, spec.function, a) for a in answers]
            per[label] = values
        totals = [sum(s.weight * per[label][i] for s, label in zip(self.rl.rewards, per)) for i in range(len(answers))]
        return totals, per

    @staticmethod
    def _one(fn: Callable[[Answer], float], name: str, a: Answer) -> float:
        shown = f"example {_short(a.example)}, completion {a.completion[:120]!r}"
        try:
            value = fn(a)
        except Exception as exc:
            raise RunFailure(f"the reward {name} raised {type(exc).__name__}: {exc}", shown,
                             "fix the reward function (or the example's fields); resume with --resume auto") from exc
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise RunFailure(f"the reward {name} returned {value!r}, not a finite number", shown,
                             "make the function return a finite float for every answer; resume with --resume auto")
        return float(value)


def _short(example: dict[str, Any]) -> str:
    text = repr(example)
    return text if len(text) <= 200 else text[:200] + "..."
