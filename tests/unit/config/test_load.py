"""The config loader: YAML reading, overrides, precedence and collected errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.config.load import (
    ConfigProblems,
    dump_config,
    load_config,
    parse_override,
    validate_config,
)
from llmkit.config.schema import RunConfig
from llmkit.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_minimal_config_takes_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "name: demo\n"), environ={})
    assert cfg.name == "demo"
    assert cfg.train.micro_batch_size == 16
    assert cfg.serve.host == "127.0.0.1"


def test_four_problems_reported_at_once(tmp_path: Path) -> None:
    text = (
        "model:\n  hidden_size: big\n"
        "train:\n  micro_batch_size: -4\n  learning_rat: 0.001\n"
    )  # wrong type, negative, misspelled key, missing `name`
    with pytest.raises(ConfigProblems) as info:
        load_config(write(tmp_path, text), environ={})
    by_path = {p.path: p.message for p in info.value.problems}
    assert set(by_path) == {"name", "model.hidden_size", "train.micro_batch_size", "train.learning_rat"}
    assert "did you mean: learning_rate?" in by_path["train.learning_rat"]
    assert "required" in by_path["name"]
    assert "greater than 0" in by_path["train.micro_batch_size"]
    assert info.value.exit_code == 2


def test_did_you_mean_for_sections_and_choices(tmp_path: Path) -> None:
    text = "name: x\ntrian:\n  max_steps: 3\ntrain:\n  precision: bf17\n"
    with pytest.raises(ConfigProblems) as info:
        load_config(write(tmp_path, text), environ={})
    msgs = {p.path: p.message for p in info.value.problems}
    assert "did you mean: train?" in msgs["trian"]
    assert "did you mean: bf16?" in msgs["train.precision"]


def test_cross_field_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigProblems, match="does not divide"):
        load_config(write(tmp_path, "name: x\ntrain:\n  global_batch_size: 16\n  micro_batch_size: 5\n"), environ={})
    with pytest.raises(ConfigProblems, match="longer than"):
        load_config(write(tmp_path, "name: x\ntrain:\n  sequence_length_tokens: 512\n"), environ={})
    with pytest.raises(ConfigProblems, match="not divisible by num_attention_heads"):
        load_config(write(tmp_path, "name: x\nmodel:\n  hidden_size: 100\n  num_attention_heads: 3\n"), environ={})


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "is empty"),
        ("- a\n- b\n", "must be a mapping"),
        ("name: x\nmodel: [1,\n", r"invalid YAML at line \d+, column \d+"),
        ("name: x\na: &a [1, 2]\nb: [*a, *a]\n", "aliases"),
        ("name: x\nname: y\n", "appears twice"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text), environ={})


def test_billion_laughs_rejected_fast(tmp_path: Path) -> None:
    lines = ["name: x", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i-1}'] * 9)}]" for i in range(1, 10)]
    with pytest.raises(ConfigError, match="aliases"):
        load_config(write(tmp_path, "\n".join(lines)), environ={})


def test_missing_dir_huge_and_binary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, environ={})
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n" + "# padding\n" * 1_100_000)
    with pytest.raises(ConfigError, match="too large"):
        load_config(big, environ={})
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: x\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8.*|offset"):
        load_config(binary, environ={})


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "name: x\nm: " + "[" * 50_000 + "]" * 50_000), environ={})


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\n")
    cfg = load_config(p, ["train.max_steps=7", "model.lora.enabled=true", "model.from_pretrained=base",
                          "eval.sample_prompts=[a, b]"], environ={})
    assert cfg.train.max_steps == 7 and cfg.model.lora.enabled is True
    assert cfg.eval.sample_prompts == ["a", "b"]
    with pytest.raises(ConfigProblems, match="did you mean: max_steps"):
        load_config(p, ["train.max_step=3"], environ={})
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(p, ["name.x=3"], environ={})
    with pytest.raises(ConfigError, match="bad override"):
        parse_override("no-equals-sign")


def test_precedence_file_then_env_then_set(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\ntrain:\n  device: cpu\n")
    assert load_config(p, environ={}).train.device == "cpu"
    assert load_config(p, environ={"LLMKIT_DEVICE": "cuda"}).train.device == "cuda"
    assert load_config(p, ["train.device=mps"], environ={"LLMKIT_DEVICE": "cuda"}).train.device == "mps"
    with pytest.raises(ConfigProblems, match="train.device"):
        load_config(p, environ={"LLMKIT_DEVICE": "tpu"})


def test_round_trip_is_identical_and_has_no_secrets(tmp_path: Path) -> None:
    secret = "hf_s3cr3tVALUEthatmustnotleak"
    env = {"HF_TOKEN": secret, "MY_KEY": secret}
    cfg = load_config(write(tmp_path, "name: x\nserve:\n  api_key_env: MY_KEY\n"), environ=env)
    text = dump_config(cfg)
    again = load_config(write(tmp_path, text, "again.yaml"), environ=env)
    assert again == cfg
    assert dump_config(again) == text
    assert secret not in text and "MY_KEY" in text


def test_secret_value_in_env_field_is_refused_and_not_echoed(tmp_path: Path) -> None:
    secret = "sk-live-abcdef123456"
    with pytest.raises(ConfigProblems) as info:
        load_config(write(tmp_path, f"name: x\nserve:\n  api_key_env: {secret}\n"), environ={})
    assert "name of an environment variable" in info.value.render()
    assert secret not in info.value.render()


def test_validate_config_accepts_model_instance_dump() -> None:
    cfg = RunConfig(name="a")
    assert validate_config(cfg.model_dump()) == cfg
