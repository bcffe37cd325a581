"""Encryption at rest through the real CLI: nothing of the data on disk in the clear, every stage
reads the run with its key, wrong/missing keys and damage stop before any work with the file
named, export writes plain files only with --decrypt, and a key rotation killed at any point
leaves the run readable with one of the two keys."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llmkit.privacy import crypto

from .serving.conftest import start_server, stop_server
from .training.helpers import make_run
from .training.test_tasks import sft_file

pytestmark = pytest.mark.slow  # whole encrypted runs through every stage

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER = base64.b64encode(bytes(range(1, 33))).decode()
SECRET = "Margaret Hamilton wrote the Apollo guidance code"  # a sentence only the corpus holds
PLAIN_OK = {"config.yaml", "manifest.json", "metrics.jsonl", "meta.json", "trainer_state.json", "rng.json",
            "checksums.json", "COMMITTED", "eval.json", "report.html", "pii_report.jsonl"}


def llmkit(*args: str, key: str | None = KEY, extra: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RUN_KEY"}
    if key is not None:
        env["RUN_KEY"] = key
    return subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True,
                          env={**env, **(extra or {})}, timeout=timeout)


def corpus(root: Path) -> Path:
    from llmkit.data.corpus import embedded_topics

    paragraphs = [text for _, text in embedded_topics()[:60]]
    for i in range(0, 60, 4):
        paragraphs[i] += f"\n{SECRET}, line {i}."
    path = root / "corpus.txt"
    path.write_text("\n\n".join(paragraphs))
    return path


def files(run: Path) -> dict[str, bytes]:
    return {str(f.relative_to(run)): f.read_bytes() for f in sorted(run.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encrypted pretraining run made by the CLI: prepare, train 10 steps, eval."""
    root = tmp_path_factory.mktemp("enc")
    cfg = make_run(root, name="e", prepared=False, privacy={"encryption_key_env": "RUN_KEY"},
                   data={"source": "text", "path": str(corpus(root))},
                   train={"max_steps": 10, "eval_every_steps": 10, "checkpoint_every_steps": 5})
    for args in (("prepare", "--config", str(cfg)), ("train", "--config", str(cfg)), ("eval", str(root / "runs/e"))):
        out = llmkit(*args)
        assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-2500:]
    assert "encryption: on (AES-256-GCM" in llmkit("train", "--config", str(cfg)).stdout  # already done: no-op
    return root / "runs" / "e"


def test_nothing_derived_from_the_data_is_on_disk_in_the_clear(encrypted: Path) -> None:
    on_disk = files(encrypted)
    sealed = {name for name, raw in on_disk.items() if raw.startswith(crypto.MAGIC)}
    plain = set(on_disk) - sealed
    assert {Path(n).name for n in plain} <= PLAIN_OK, sorted(plain)
    for must in ("data/train.bin", "data/val.bin", "tokenizer/tokenizer.json", "final/model.safetensors",
                 "final/tokenizer.json", "eval_samples.json", "checkpoints/step-000010/model.safetensors",
                 "checkpoints/step-000010/optimizer.safetensors"):
        assert must in sealed, must
    needles = [SECRET.encode(), b"Hamilton", "Ġguidance".encode()]  # the text, and a BPE piece of it
    for name, raw in on_disk.items():
        assert not any(n in raw for n in needles), f"{name} holds data in the clear"
    result = json.loads((encrypted / "eval.json").read_text())
    assert result["samples"] == [] and result["samples_encrypted"]["count"] == 3 and result["metrics"]["val_ppl"] > 1
    manifest = json.loads((encrypted / "manifest.json").read_text())
    assert manifest["privacy"]["encryption"] == {"algorithm": "AES-256-GCM", "key_env": "RUN_KEY",
                                                 "key_id": crypto.key_from_env("K", {"K": KEY}).id_hex}


def test_every_stage_reads_the_run_with_its_key(encrypted: Path, tmp_path: Path) -> None:
    gen = llmkit("generate", str(encrypted), "--prompt", "The", "--max-tokens", "4")
    assert gen.returncode == 0, gen.stderr[-2000:]
    status = llmkit("privacy", "status", str(encrypted))
    assert "opens with the key at hand" in status.stdout and "needs another key" not in status.stdout
    server = start_server(encrypted, env={"RUN_KEY": KEY})
    try:
        r = httpx.post(server.url + "/v1/completions", json={"model": "e", "prompt": "The", "max_tokens": 3},
                       timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        stop_server(server)
    assert llmkit("report", str(encrypted)).returncode == 0
    html = (encrypted / "report.html").read_text()
    assert "3 samples are encrypted at rest" in html
    assert "encryption at rest" in html and SECRET not in html


def test_export_writes_plain_files_only_when_asked(encrypted: Path, tmp_path: Path) -> None:
    refused = llmkit("export", str(encrypted), "--format", "hf", "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "encrypted at rest" in refused.stderr and "--decrypt" in refused.stderr
    assert not (tmp_path / "x").exists()
    out = llmkit("export", str(encrypted), "--format", "hf", "--out", str(tmp_path / "x"), "--decrypt")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "PLAIN files (--decrypt)" in out.stdout and "verdict: PASS" in out.stdout
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "x"))  # plain transformers, no llmkit, no key
    assert AutoTokenizer.from_pretrained(str(tmp_path / "x")).encode("def")


def test_wrong_or_missing_key_stops_before_any_work(encrypted: Path, tmp_path: Path) -> None:
    run = tmp_path / "e"
    shutil.copytree(encrypted, run)
    cfg = tmp_path / "e.yaml"
    cfg.write_text((run / "config.yaml").read_text().replace(str(encrypted.parent), str(tmp_path)))
    before = files(run)
    wrong = llmkit("train", "--config", str(cfg), "--set", "train.max_steps=14", "--allow-config-change", key=OTHER)
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    assert "is encrypted with another key" in wrong.stderr and "not damage" in wrong.stderr
    assert "falling back" not in wrong.stdout + wrong.stderr
    missing = llmkit("train", "--config", str(cfg), "--set", "train.max_steps=14", "--allow-config-change", key=None)
    assert missing.returncode == 2 and "RUN_KEY is not set" in missing.stderr
    evaluated = llmkit("eval", str(run), key=OTHER)
    assert evaluated.returncode == 2 and "another key" in evaluated.stderr
    assert files(run) == before  # nothing written, replaced or deleted
    resumed = llmkit("train", "--config", str(cfg), "--set", "train.max_steps=14", "--allow-config-change")
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout and "step-000010" in resumed.stdout


@pytest.mark.parametrize("target, cut, stage", [("data/train.bin", "flip", "eval"),
                                                 ("final/model.safetensors", "truncate", "eval"),
                                                 ("final/tokenizer.json", "flip", "eval"),
                                                 ("tokenizer/tokenizer.json", "flip", "prepare")])
def test_damage_is_named_before_any_work(encrypted: Path, tmp_path: Path, target: str, cut: str, stage: str) -> None:
    run = tmp_path / "e"
    shutil.copytree(encrypted, run)
    cfg = tmp_path / "e.yaml"
    cfg.write_text((run / "config.yaml").read_text().replace(str(encrypted.parent), str(tmp_path)))
    f = run / target
    raw = bytearray(f.read_bytes())
    if cut == "flip":
        raw[len(raw) // 2] ^= 0x40
    else:
        raw = raw[: len(raw) - 100]
    f.write_bytes(bytes(raw))
    before = files(run)
    out = llmkit("eval", str(run)) if stage == "eval" else llmkit("prepare", "--config", str(cfg))
    assert out.returncode == 2, out.stderr[-2000:]
    assert files(run) == before  # nothing rewritten or removed
    assert f"{f} is damaged" in out.stderr and "fails authentication" in out.stderr


def test_a_damaged_checkpoint_falls_back_but_a_wrong_key_does_not(encrypted: Path, tmp_path: Path) -> None:
    run = tmp_path / "e"
    shutil.copytree(encrypted, run)
    cfg = tmp_path / "e.yaml"
    cfg.write_text((run / "config.yaml").read_text().replace(str(encrypted.parent), str(tmp_path)))
    f = run / "checkpoints/step-000010/model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    out = llmkit("train", "--config", str(cfg), "--set", "train.max_steps=12", "--allow-config-change")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "checkpoint step 10 is damaged" in out.stdout and "resumed from" in out.stdout and "step-000005" in out.stdout


def _readable_with(run: Path, key: str) -> bool:
    """Whether every sealed file of the run opens and authenticates with ``key`` (after the
    recovery any stage runs when it opens the run)."""
    from llmkit.rundir import RunDir

    os.environ["RUN_KEY"] = key
    try:
        with RunDir(run).run_context().open_run(run):  # finishes a committed rotation, as every stage does
            pass
        k = crypto.key_from_env("RUN_KEY")
        for f in run.rglob("*"):
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(run).parts) and crypto.is_sealed(f):
                crypto.SealedFile(f, k).verify()
        return True
    except crypto.SealError:
        return False
    finally:
        del os.environ["RUN_KEY"]


def test_rotation_killed_at_any_point_leaves_one_readable_key(encrypted: Path, tmp_path: Path) -> None:
    count = sum(1 for f in encrypted.rglob("*") if f.is_file() and crypto.is_sealed(f))
    points = 2 * count + 2  # each file staged, the commit, each staged file moved into place
    outcomes = {}
    for n in [*range(1, points + 5, 3), count, count + 1, count + 2]:
        run = tmp_path / f"r{n}"
        shutil.copytree(encrypted, run)
        out = llmkit("privacy", "rotate", "--run", str(run), "--new-key-env", "NEW_KEY",
                     extra={"NEW_KEY": OTHER, "LLMKIT_FAULT": f"rotate:kill@{n}"})
        killed = out.returncode == -9
        old_ok, new_ok = _readable_with(run, KEY), _readable_with(run, OTHER)
        assert old_ok != new_ok, f"kill at point {n}: old key {old_ok}, new key {new_ok}"
        outcomes[n] = ("killed" if killed else "done", "new" if new_ok else "old")
        shutil.rmtree(run)
    assert ("killed", "old") in outcomes.values() and ("killed", "new") in outcomes.values()
    assert ("done", "new") in outcomes.values()


def test_rotation_then_every_stage_uses_the_new_key(encrypted: Path, tmp_path: Path) -> None:
    run = tmp_path / "e"
    shutil.copytree(encrypted, run)
    out = llmkit("privacy", "rotate", "--run", str(run), "--new-key-env", "NEW_KEY", extra={"NEW_KEY": OTHER})
    assert out.returncode == 0 and "re-encrypted" in out.stdout and "put the new key in RUN_KEY" in out.stdout
    assert llmkit("eval", str(run), key=KEY).returncode == 2
    assert llmkit("eval", str(run), key=OTHER).returncode == 0


def test_sft_and_classification_sets_are_sealed(tmp_path: Path) -> None:
    rows = [{"text": f"{'good' if i % 2 else 'bad'} item {i}", "label": "pos" if i % 2 else "neg"} for i in range(80)]
    (tmp_path / "cls.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    runs = {"sft": {"train": {"task": "sft", "max_steps": 4, "eval_every_steps": 4},
                    "data": {"sft_path": str(sft_file(tmp_path)), "val_fraction": 0.1}},
            "cls": {"train": {"task": "classify", "max_steps": 4, "eval_every_steps": 4},
                    "data": {"classify_path": str(tmp_path / "cls.jsonl"), "val_fraction": 0.1}}}
    for name, sections in runs.items():
        cfg = make_run(tmp_path, name=name, prepared=False, privacy={"encryption_key_env": "RUN_KEY"}, **sections)
        for stage in ("prepare", "train"):
            out = llmkit(stage, "--config", str(cfg))
            assert out.returncode == 0, out.stderr[-2000:]
        run = tmp_path / "runs" / name
        sub = run / "data" / ("sft" if name == "sft" else "classify")
        data_files = [f for f in sub.iterdir() if f.name != "meta.json"]
        assert data_files and all(crypto.is_sealed(f) for f in data_files), [f.name for f in data_files]
        needle = b"plus one is" if name == "sft" else b"good item"
        assert not any(needle in raw for raw in files(run).values())
        assert hashlib.sha256((run / "final/model.safetensors").read_bytes()).hexdigest()  # written
        assert crypto.is_sealed(run / "final/model.safetensors")
