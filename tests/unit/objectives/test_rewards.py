"""The built-in rewards, their options in the config, user reward files, and the prompts of RL data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmkit.config.schema import RewardConfig, RlConfig
from llmkit.data import prompts as prompts_
from llmkit.errors import ConfigError, RunFailure, UsageError
from llmkit.objectives.rewards import Answer, Rewards


def score(spec: dict, completion: str, example: dict | None = None, tokens: int = 5, finished: bool = True,
          **rl: object) -> float:
    rewards = Rewards(RlConfig(rewards=[RewardConfig(**spec)], **rl))  # type: ignore[arg-type]
    return rewards.score([Answer("p", completion, example or {}, tokens, finished)])[0][0]


def test_exact_match_takes_the_last_number_or_the_pattern() -> None:
    assert score({"function": "exact_match"}, "3 + 4 is 7.", {"answer": "7"}) == 1.0
    assert score({"function": "exact_match"}, "7, no: 8", {"answer": 7}) == 0.0
    assert score({"function": "exact_match"}, "the total is 1,200", {"answer": "1200"}) == 1.0
    assert score({"function": "exact_match"}, "no number", {"answer": "1"}) == 0.0
    boxed = {"function": "exact_match", "pattern": r"\\boxed\{([^}]*)\}"}
    assert score(boxed, "so \\boxed{Paris}, not 3", {"answer": "paris"}) == 1.0
    assert score(boxed, "Paris", {"answer": "paris"}) == 0.0


def test_regex_contains_and_length() -> None:
    assert score({"function": "regex", "pattern": r"^<think>.*</think>"}, "<think>x</think> 4") == 1.0
    assert score({"function": "regex", "pattern": r"^<think>"}, "4") == 0.0
    assert score({"function": "contains"}, "The `FOR` statement loops.", {"answer": "`for`"}) == 1.0
    assert score({"function": "contains"}, "It loops.", {"answer": "`for`"}) == 0.0
    spec = {"function": "length", "min_tokens": 2, "max_tokens": 10}
    assert score(spec, "x", tokens=5) == 1.0
    assert score(spec, "x", tokens=11) == 0.0 and score(spec, "x", tokens=1) == 0.0
    assert score(spec, "x", tokens=5, finished=False) == 0.0  # cut at max_new_tokens: never counts
    assert score({"function": "length"}, "x", tokens=40, max_new_tokens=40) == 1.0  # max_tokens: max_new_tokens


def test_weights_sum_and_each_reward_is_reported() -> None:
    rl = RlConfig(rewards=[RewardConfig(function="contains", weight=0.25), RewardConfig(function="length", weight=2)])
    totals, per = Rewards(rl).score([Answer("p", "a 7", {"answer": "7"}, 3, True),
                                     Answer("p", "a 8", {"answer": "7"}, 3, False)])
    assert totals == [2.25, 0.0] and per == {"contains": [1.0, 0.0], "length": [1.0, 0.0]}


@pytest.mark.parametrize("spec,message", [
    ({"function": "contains", "pattern": "x"}, "has no option pattern"),
    ({"function": "length", "timeout_s": 3}, "has no option timeout_s"),
    ({"function": "python_asserts", "pattern": "x"}, "has no option pattern"),
    ({"function": "regex"}, "needs a pattern"),
    ({"function": "regex", "pattern": "(["}, "not a valid regex"),
    ({"function": "nope"}, "neither a built-in"),
    ({"function": "length", "min_tokens": 9, "max_tokens": 3}, "below min_tokens"),
    ({"function": "contains", "colour": "red"}, "Extra inputs are not permitted"),
])
def test_reward_options_are_checked(spec: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RewardConfig(**spec)


def test_a_missing_field_or_a_bad_value_stops_with_the_example() -> None:
    with pytest.raises(RunFailure, match="reads the example's 'answer' field") as err:
        score({"function": "contains"}, "x", {"question": "What is 2 + 2?"})
    assert "What is 2 + 2?" in err.value.detail


def test_user_rewards_load_from_the_run_copy_and_its_hash(tmp_path: Path) -> None:
    source = "def shout(prompt, completion, example):\n    return float(completion.isupper())\n"
    (tmp_path / "mine.py").write_text(source)
    rl = RlConfig(rewards=[RewardConfig(function="mine:shout")], allow_user_rewards=True, reward_files=["x/mine.py"])
    hashes = {"mine.py": hashlib.sha256(source.encode()).hexdigest()}
    rewards = Rewards(rl, tmp_path, hashes)
    assert rewards.score([Answer("p", "HI", {}, 1, True), Answer("p", "hi", {}, 1, True)])[0] == [1.0, 0.0]
    with pytest.raises(ConfigError, match="changed since prepare"):
        Rewards(rl, tmp_path, {"mine.py": "0" * 64})
    with pytest.raises(ConfigError, match="has no function 'whisper'"):
        Rewards(rl.model_copy(update={"rewards": [RewardConfig(function="mine:whisper")]}), tmp_path, hashes)
    with pytest.raises(ConfigError, match="no file in train.rl.reward_files defines module 'other'"):
        Rewards(rl.model_copy(update={"rewards": [RewardConfig(function="other:f")]}), tmp_path, hashes)
    with pytest.raises(ConfigError, match="opt-in"):
        Rewards(rl.model_copy(update={"allow_user_rewards": False}), tmp_path, hashes)


def test_prompts_take_strings_and_conversations() -> None:
    p = prompts_.to_prompt({"prompt": "Hi?", "answer": "x", "system": "Be brief."}, "line 1")
    assert p.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert p.example["answer"] == "x"
    chat = prompts_.to_prompt({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                            {"role": "user", "content": "c"}]}, "line 2")
    assert len(chat.messages) == 3
    for bad, message in (({"answer": "x"}, "neither `prompt` nor `messages`"), ({"prompt": "  "}, "empty"),
                         ({"messages": [{"role": "assistant", "content": "b"}]}, "ends with a assistant turn"),
                         ("text", "not an object")):
        with pytest.raises(UsageError, match=message):
            prompts_.to_prompt(bad, "line 3")


def test_embedded_prompts_hold_out_statements() -> None:
    train, val = prompts_.embedded_prompts(0.2, seed=3)
    subjects = lambda ps: {p.where for p in ps}  # noqa: E731
    assert subjects(train).isdisjoint(subjects(val)) and len(val) >= 6
    assert all(p.example["answer"] for p in train + val)
    named = [p for p in train + val if "`for` statement" in p.where]
    assert named and named[0].example["answer"] == "`for`"
    assert prompts_.embedded_prompts(0.2, seed=3)[1] == val  # seeded
