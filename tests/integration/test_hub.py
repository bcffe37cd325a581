"""Models and tokenizers from the Hugging Face Hub, through the real CLI, against a stand-in for the
Hub's API on 127.0.0.1 (tests/fakehub.py): huggingface_hub downloads and writes its own cache, then
runs resolve from that cache with HF_HUB_OFFLINE=1; revisions pin commits, and the manifest
records them; gated, unknown, .bin-only and incomplete repositories fail with what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from llmkit.config.schema import DataConfig, ModelConfig, TokenizerConfig
from llmkit.data.corpus import iter_documents
from llmkit.data.tokenizer import load_tokenizer, train_bpe, wrap
from llmkit.model.build import build_model

from ..fakehub import FakeHub, Repo, files_of
from .training.helpers import TINY, deep_update

pytestmark = pytest.mark.slow  # fine-tunes against the stand-in Hub


def _model_dir(root: Path, seed: int, pickle: bool = False) -> Path:
    out = root / f"m{seed}{'-bin' if pickle else ''}"
    tcfg = TokenizerConfig(vocab_size=512)
    wrap(train_bpe(iter_documents(DataConfig()), tcfg), tcfg, 64).save_pretrained(str(out))
    tok = load_tokenizer(out)
    model = build_model(ModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                    max_position_embeddings=64), len(tok), tok.eos_token_id, tok.pad_token_id, seed=seed)
    if pickle:
        model.config.save_pretrained(str(out))
        torch.save(model.state_dict(), out / "pytorch_model.bin")
    else:
        model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("hubsrc")
    with FakeHub() as fake:
        repo = Repo()
        fake.first = repo.add_commit(files_of(_model_dir(root, 1)), "v1")  # type: ignore[attr-defined]
        fake.second = repo.add_commit(files_of(_model_dir(root, 2)), "main")  # type: ignore[attr-defined]
        fake.repos["org/tiny"] = repo
        gated = Repo(gated_token="hf_secret")
        gated.add_commit(files_of(_model_dir(root, 3)))
        fake.repos["org/gated"] = gated
        pickled = Repo()
        pickled.add_commit(files_of(_model_dir(root, 4, pickle=True)))
        fake.repos["org/pickled"] = pickled
        yield fake


def _config(tmp: Path, name: str, ref: str, **extra) -> Path:  # type: ignore[no-untyped-def]
    cfg = deep_update(TINY, {"name": name, "runs_root": str(tmp / "runs"),
                             "model": {"from_pretrained": ref, **extra.pop("model", {})},
                             "tokenizer": {"kind": "pretrained"},
                             "train": {"max_steps": 3, "eval_every_steps": 3, "checkpoint_every_steps": 3}, **extra})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(hub: FakeHub, home: Path, offline: bool = False, **more: str) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1" if offline else "0",
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": "", **more}


def test_a_hub_model_fine_tunes_then_resolves_offline_from_the_cache(cli, hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "hf"
    cfg = _config(tmp_path, "online", "org/tiny")
    for stage in ("prepare", "train"):
        out = cli(stage, "--config", str(cfg), env=_env(hub, home), timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
    assert f"commit {hub.second}" in out.stdout  # main resolved to its newest commit
    assert not any(d.endswith(".bin") for d in hub.downloads)
    manifest = json.loads((tmp_path / "runs" / "online" / "manifest.json").read_text())
    assert manifest["hub"]["model"] == {"ref": "org/tiny", "repo_id": "org/tiny", "revision": "main", "commit": hub.second}
    assert manifest["hub"]["tokenizer"]["commit"] == hub.second
    # the cache huggingface_hub wrote is its own layout: its scanner reads it back
    from huggingface_hub import scan_cache_dir

    cached = {r.repo_id: r for r in scan_cache_dir(home / "hub").repos}
    assert {rev.commit_hash for rev in cached["org/tiny"].revisions} == {hub.second}

    before = len(hub.downloads)
    cfg = _config(tmp_path, "offline", "org/tiny")
    for stage in ("prepare", "train"):
        out = cli(stage, "--config", str(cfg), env=_env(hub, home, offline=True), timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
    assert len(hub.downloads) == before  # nothing fetched
    manifest = json.loads((tmp_path / "runs" / "offline" / "manifest.json").read_text())
    assert manifest["hub"]["model"]["commit"] == hub.second
    # `llmkit plan` sizes the model the Hub id names, read from the cache, not the config's numbers
    from transformers import AutoModelForCausalLM

    snapshot = next(iter(cached["org/tiny"].revisions)).snapshot_path
    expected = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(snapshot)).parameters())
    out = cli("plan", "--config", str(cfg), "--set", "model.hidden_size=256", "--no-this-machine", "--device",
              "H100-80GB", "--json", env=_env(hub, home, offline=True))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["parameters"] == expected


def test_a_revision_pins_its_commit_and_the_model_is_that_commits(cli, hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from llmkit.model.build import load_model

    home = tmp_path / "hf"
    cfg = _config(tmp_path, "pinned", "org/tiny@v1")
    for stage in ("prepare", "train"):
        out = cli(stage, "--config", str(cfg), env=_env(hub, home), timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
    manifest = json.loads((tmp_path / "runs" / "pinned" / "manifest.json").read_text())
    assert manifest["hub"]["model"] == {"ref": "org/tiny@v1", "repo_id": "org/tiny", "revision": "v1", "commit": hub.first}
    snapshot = home / "hub" / "models--org--tiny" / "snapshots" / hub.first
    reference = _model_dir(tmp_path, 1)  # the same seed as commit v1
    a, b = load_model(snapshot, False), load_model(reference, False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_offline_without_the_model_in_the_cache_says_how_to_get_it(cli, hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = _config(tmp_path, "r", "org/tiny")
    out = cli("prepare", "--config", str(cfg), env=_env(hub, tmp_path / "empty", offline=True))
    assert out.returncode == 3, out.stderr
    assert "is not in the Hugging Face cache" in out.stderr and "HF_HUB_OFFLINE is set" in out.stderr
    assert "Traceback" not in out.stderr


def test_gated_unknown_and_bad_revisions_fail_with_the_fix(cli, hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = _env(hub, tmp_path / "hf")
    out = cli("prepare", "--config", str(_config(tmp_path, "g", "org/gated")), env=env)
    assert out.returncode == 3 and "org/gated is gated" in out.stderr and "$HF_TOKEN" in out.stderr, out.stderr
    # the token is read from the variable hub_token_env names
    cfg = _config(tmp_path, "g2", "org/gated", hub_token_env="MY_HUB_TOKEN")
    out = cli("prepare", "--config", str(cfg), env={**env, "MY_HUB_TOKEN": "hf_secret"})
    assert out.returncode == 0, out.stderr
    out = cli("prepare", "--config", str(_config(tmp_path, "u", "org/nothing")), env=env)
    assert out.returncode == 2 and "no tokenizer 'org/nothing' on the Hugging Face Hub" in out.stderr
    out = cli("prepare", "--config", str(_config(tmp_path, "v", "org/tiny@v9")), env=env)
    assert out.returncode == 2 and "org/tiny has no revision 'v9'" in out.stderr


def test_bin_only_models_are_refused_unless_allowed(cli, hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = _env(hub, tmp_path / "hf")
    cfg = _config(tmp_path, "p", "org/pickled")
    assert cli("prepare", "--config", str(cfg), env=env).returncode == 0  # the tokenizer is no pickle
    out = cli("train", "--config", str(cfg), env=env)
    assert out.returncode == 2 and "org/pickled has no safetensors weights" in out.stderr
    assert "model.allow_pickle_weights" in out.stderr
    assert not any(d.endswith(".bin") for d in hub.downloads if d.startswith("org/pickled"))
    cfg = _config(tmp_path, "p2", "org/pickled", model={"allow_pickle_weights": True})
    for stage in ("prepare", "train"):
        out = cli(stage, "--config", str(cfg), env=env, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
    assert "org/pickled/pytorch_model.bin" in hub.downloads


def test_an_incomplete_cached_snapshot_is_never_used(cli, hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "hf"
    cfg = _config(tmp_path, "i", "org/tiny")
    assert cli("prepare", "--config", str(cfg), env=_env(hub, home)).returncode == 0  # tokenizer files cached
    snapshot = home / "hub" / "models--org--tiny" / "snapshots" / hub.second
    (snapshot / "tokenizer.json").unlink()  # as if the download had stopped half way
    shutil.rmtree(tmp_path / "runs")
    out = cli("prepare", "--config", str(cfg), env=_env(hub, home, offline=True))
    assert out.returncode == 3 and "incomplete" in out.stderr, out.stderr
    assert not (tmp_path / "runs" / "i" / "tokenizer").exists()


def test_export_pushes_to_the_hub_with_a_model_card_and_it_loads_back(cli, hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from llmkit.training.loop import train as run_train

    from .training.helpers import make_run

    cfg = make_run(tmp_path, train={"max_steps": 4, "eval_every_steps": 4})
    run = run_train(__import__("llmkit.config.load", fromlist=["load_config"]).load_config(cfg, environ={}),
                    log=lambda _: None).run_dir
    env = _env(hub, tmp_path / "hf", HF_TOKEN="")
    out = cli("export", str(run), "--out", str(tmp_path / "hf-out"), "--push-to-hub", "me/tiny-chat", cwd=tmp_path, env=env)
    assert out.returncode == 3 and "needs a Hugging Face token" in out.stderr  # nothing pushed without one
    assert "me/tiny-chat" not in hub.repos
    env["HF_TOKEN"] = "hf_write"
    out = cli("export", str(run), "--out", str(tmp_path / "hf-out"), "--overwrite", "--push-to-hub", "me/tiny-chat",
              "--private", "--json", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr + str(hub.unrouted)
    assert json.loads(out.stdout)["pushed"].startswith(hub.url + "/me/tiny-chat/commit/")
    repo = hub.repos["me/tiny-chat"]
    assert repo.private and repo.messages == ["llmkit export of run t"]
    files = repo.commits[repo.refs["main"]]
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    card = files["README.md"].decode()
    for part in ("library_name: transformers", "## Training data", "## Evaluation", "| val_loss |", "## Versions",
                 "- llmkit ", "- transformers ", "```yaml", "name: t"):
        assert part in card, part
    assert str(tmp_path) not in card  # local paths by file name only
    # anyone can now load it from the Hub with plain transformers, and it is the run's model
    from transformers import AutoModelForCausalLM

    from llmkit.hub import resolve

    code = ("import json; from llmkit.hub import resolve; "
            "print(json.dumps(str(resolve('me/tiny-chat', 'model').path)))")
    fetched = __import__("subprocess").run([__import__("sys").executable, "-c", code], capture_output=True, text=True,
                                           env={**__import__("os").environ, **_env(hub, tmp_path / "other")})
    path = Path(json.loads(fetched.stdout.strip().splitlines()[-1]))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        ours = AutoModelForCausalLM.from_pretrained(str(run / "final")).eval()(ids).logits
        theirs = AutoModelForCausalLM.from_pretrained(str(path)).eval()(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert resolve  # imported for the subprocess's sake above


@pytest.mark.network
def test_a_real_public_hub_model_resolves_and_loads() -> None:
    """The real Hub (only with LLMKIT_NETWORK_TESTS=1): a tiny public model, pinned to a branch."""
    from llmkit.hub import resolve
    from llmkit.model.build import load_model

    source = resolve("hf-internal-testing/tiny-random-LlamaForCausalLM@main", "model", None)
    assert source.commit and len(source.commit) == 40
    model = load_model(source.path, False)
    assert model.config.model_type == "llama"


def test_a_hub_dataset_is_streamed_into_the_token_shards(cli, hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [{"body": f"Note {i}: the for statement loops over item {i * 7} of a list, then prints it."} for i in range(300)]
    dataset = Repo()
    dataset.add_commit({"data/train.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode(), "README.md": b"# notes\n"})
    hub.datasets["org/notes"] = dataset
    cfg = deep_update(TINY, {"name": "ds", "runs_root": str(tmp_path / "runs"), "tokenizer": {"vocab_size": 300},
                             "data": {"source": "hf", "path": "org/notes", "text_field": "body"}})
    (tmp_path / "ds.yaml").write_text(yaml.safe_dump(cfg))
    out = cli("prepare", "--config", str(tmp_path / "ds.yaml"), "--json", env=_env(hub, tmp_path / "hf"), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    meta = json.loads(out.stdout)["outputs"]["pretrain"]
    assert meta["train_documents"] + meta["val_documents"] == 300
    assert "org/notes/data/train.jsonl" in hub.downloads


def test_the_studio_pushes_an_export_to_the_hub_when_a_token_is_set(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from .studio.conftest import start_studio, stop_studio, tiny_yaml

    studio = start_studio(tmp_path, env=_env(hub, tmp_path / "hf", HF_TOKEN="hf_write"))
    try:
        assert studio.post("/api/runs", {"yaml": tiny_yaml("s", train={"max_steps": 4, "eval_every_steps": 4})}).status_code == 200
        done = studio.wait("s", lambda d: d["status"] in ("done", "failed"))
        assert done["status"] == "done" and done["hub_push"]
        assert studio.post("/api/runs/s/export", {"format": "hf", "push_to_hub": "me/from-studio"}).status_code == 200
        exported = studio.wait("s", lambda d: d["jobs"]["export"] and d["jobs"]["export"]["status"] in ("done", "failed"))
        assert exported["jobs"]["export"]["status"] == "done", exported["jobs"]["export"].get("log_tail")
        repo = hub.repos["me/from-studio"]
        assert {"config.json", "model.safetensors", "README.md"} <= set(repo.commits[repo.refs["main"]])
    finally:
        stop_studio(studio)
    quiet = start_studio(tmp_path, env=_env(hub, tmp_path / "hf"))  # no token: the page offers no push
    try:
        assert quiet.run("s")["hub_push"] is False
        refused = quiet.post("/api/runs/s/export", {"format": "hf", "push_to_hub": "me/other"})
        assert refused.status_code == 400 and "HF_TOKEN" in refused.json()["error"]["message"]
    finally:
        stop_studio(quiet)
