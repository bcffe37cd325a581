"""The model card (README.md) of an export, and pushing an export to the Hugging Face Hub.

The card says what the model was trained on (the data sources as configured, local paths by file
name only, and the token and example counts `prepare` recorded), how (task, steps, batch,
sequence length, learning rate, precision, the last training loss), how it evaluated (eval.json,
else the run's last evaluation), the whole resolved config, and the exact versions of llmkit and
the libraries that trained it (from the run's manifest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmkit.version import __version__
from llmkit.errors import EnvironmentProblem, RunFailure, UsageError
from llmkit.rundir import RunDir


def _shown(path: str | None) -> str:
    """A configured path as the card shows it: Hub ids whole, local paths by their last part."""
    if not path:
        return ""
    from llmkit.hub import is_hub_id

    return path if is_hub_id(path) or "://" in path else Path(path).name


PATH_KEYS = {("runs_root",), ("model", "from_pretrained"), ("tokenizer", "path"), ("data", "path"), ("data", "sft_path"),
             ("data", "classify_path"), ("train", "checkpoint_uri")}


def shown_config(cfg: Any) -> str:
    """The resolved config as YAML with local paths cut to their last part (the card is public)."""
    import yaml

    data = cfg.model_dump(mode="json")
    for keys in PATH_KEYS:
        node = data
        for k in keys[:-1]:
            node = node.get(k, {})
        if isinstance(node.get(keys[-1]), str):
            node[keys[-1]] = _shown(node[keys[-1]])
    for source in data.get("data", {}).get("mix", []):
        if source.get("path"):
            source["path"] = _shown(source["path"])
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip()


def _data_lines(cfg: Any, run: RunDir) -> list[str]:
    d = cfg.data
    lines = []
    if cfg.train.task == "pretrain":
        if d.mix:
            lines.append("- a mixture: " + ", ".join(f"{m.source} `{_shown(m.path) or 'embedded'}` (weight {m.weight:g})"
                                                      for m in d.mix))
        else:
            lines.append(f"- {d.source}" + (f" `{_shown(d.path)}`" if d.path else " (Python's own documentation)"))
    elif cfg.train.task == "sft":
        lines.append(f"- supervised examples: `{_shown(d.sft_path)}`")
    elif cfg.train.task == "preference":
        lines.append(f"- preference pairs: `{_shown(d.preference_path)}`" if d.preference_path else
                     "- preference pairs made from Python's own documentation")
        lines.append(f"- loss: {cfg.train.preference.loss} (beta {cfg.train.preference.beta:g})")
    elif cfg.train.task == "rl":
        rl = cfg.train.rl
        lines.append(f"- prompts: `{_shown(d.prompts_path)}`" if d.prompts_path else
                     "- prompts made from Python's own documentation")
        lines.append(f"- reinforcement learning: {rl.loss}, {rl.group_size} sampled answers a prompt, rewards: "
                     + ", ".join(f"{r.function} (weight {r.weight:g})" for r in rl.rewards))
    else:
        lines.append(f"- labelled texts: `{_shown(d.classify_path)}`")
    for meta_file in sorted(run.data.rglob("meta.json")) if run.data.exists() else []:
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        counts = [f"{meta[k]:,} {k.replace('_', ' ')}" for k in ("train_tokens", "val_tokens", "train_documents",
                                                                   "train_examples", "val_examples", "train_pairs",
                                                                   "val_pairs", "train_prompts", "val_prompts")
                  if k in meta]
        if counts:
            lines.append("- " + ", ".join(counts))
        if meta.get("pii"):
            lines.append("- personal data scrubbed before training (privacy.pii)")
    if cfg.privacy.dp.enabled:
        lines.append("- trained with differential privacy (privacy.dp; the run's metrics record the epsilon spent)")
    return lines


def _metrics(run: RunDir) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the last training record, the evaluation: eval.json's metrics, else the last eval record)."""
    last_train: dict[str, Any] = {}
    last_eval: dict[str, Any] = {}
    if run.metrics.exists():
        for line in run.metrics.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line) if line.strip() else {}
            if rec.get("kind") == "train":
                last_train = rec
            elif rec.get("kind") == "eval":
                last_eval = {k: v for k, v in rec.items() if k not in ("kind",)}
    eval_file = run.root / "eval.json"
    if eval_file.exists():
        try:
            last_eval = json.loads(eval_file.read_text(encoding="utf-8")).get("metrics", last_eval)
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # an encrypted run's eval.json is sealed
    return last_train, last_eval


def model_card(run_path: str | Path, repo_id: str) -> str:
    """README.md for the export of ``run_path`` published as ``repo_id``."""
    run = RunDir(Path(run_path))
    cfg = run.load_config()
    last_train, evaluation = _metrics(run)
    manifest = json.loads(run.manifest.read_text(encoding="utf-8")) if run.manifest.exists() else {}
    versions = {"llmkit": manifest.get("llmkit_version", __version__)}
    for name, value in (manifest.get("packages") or {}).items():
        if name in ("torch", "transformers", "tokenizers", "peft", "safetensors") and value:
            versions[name] = value
    if manifest.get("torch", {}).get("version"):
        versions["torch"] = manifest["torch"]["version"]
    if manifest.get("python"):
        versions["python"] = manifest["python"]
    base = cfg.model.from_pretrained
    front = ["---", "library_name: transformers", "pipeline_tag: " + ("text-classification" if cfg.train.task == "classify"
                                                                      else "text-generation"),
             "tags:", "- llmkit", f"- {cfg.train.task}"]
    from llmkit.hub import is_hub_id

    if base and is_hub_id(base):
        front.append(f"base_model: {base.split('@')[0]}")
    front.append("---")
    t = cfg.train
    what = {"pretrain": "pretrained from scratch" if not base else "further pretrained",
            "sft": "fine-tuned on supervised examples", "classify": "trained as a text classifier",
            "preference": "preference-tuned"}[t.task]
    body = [f"# {repo_id.split('/')[-1]}", "",
            f"A {cfg.model.architecture} model {what}" + (f" from `{_shown(base)}`" if base else "")
            + (" with LoRA adapters (merged)" if cfg.model.lora.enabled else "")
            + f" by [llmkit](https://pypi.org/project/llmkit/) (run `{cfg.name}`).", "",
            "## Training data", "", *_data_lines(cfg, run), "",
            "## Training", "",
            f"- {last_train.get('step', t.max_steps)} steps of {t.global_batch_size} sequences of "
            f"{t.sequence_length_tokens} tokens, learning rate {t.learning_rate:g} ({t.schedule}), precision {t.precision}",
            ]
    if last_train.get("loss") is not None:
        body.append(f"- last training loss {last_train['loss']:.4f}")
    body += ["", "## Evaluation", ""]
    numbers = {k: v for k, v in evaluation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        body += ["| metric | value |", "| --- | --- |", *[f"| {k} | {v:.4g} |" for k, v in numbers.items()]]
    else:
        body.append("Not evaluated (`llmkit eval RUN` writes eval.json).")
    body += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
             f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")', "```", "",
             "## Versions", "", *[f"- {k} {v}" for k, v in versions.items()], "",
             "## Config", "", "<details><summary>the run's resolved config</summary>", "", "```yaml",
             shown_config(cfg), "```", "", "</details>", ""]
    return "\n".join(front + [""] + body)


def push_to_hub(run: Path, exported: Path, repo_id: str, private: bool, token_env: str | None) -> str:
    """Write the card into the export and upload it (a directory, or a GGUF file with its card) to
    ``repo_id``, creating the repository when needed; returns the commit's URL."""
    import os

    from llmkit.hub import HUB_ID
    from llmkit.optional import require

    if not HUB_ID.match(repo_id) or "@" in repo_id:
        raise UsageError(f"--push-to-hub {repo_id!r} is not a repository id", "", "give ORG/NAME (or USER/NAME)")
    require("huggingface_hub", "hub", "--push-to-hub")
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    token = os.environ.get(token_env) if token_env else None
    if not token:
        raise EnvironmentProblem("--push-to-hub needs a Hugging Face token with write access",
                                 f"${token_env or 'HF_TOKEN'} is not set",
                                 f"create one at https://huggingface.co/settings/tokens and export {token_env or 'HF_TOKEN'}")
    card = model_card(run, repo_id)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=True if private else None, exist_ok=True)  # else the owner's default
        if exported.is_dir():
            (exported / "README.md").write_text(card, encoding="utf-8")
            info = api.upload_folder(folder_path=str(exported), repo_id=repo_id,
                                     commit_message=f"llmkit export of run {run.name}")
        else:
            readme = exported.with_name(exported.stem + ".README.md")
            readme.write_text(card, encoding="utf-8")
            api.upload_file(path_or_fileobj=str(readme), path_in_repo="README.md", repo_id=repo_id)
            info = api.upload_file(path_or_fileobj=str(exported), path_in_repo=exported.name, repo_id=repo_id,
                                   commit_message=f"llmkit export of run {run.name}")
    except hub_errors.HfHubHTTPError as exc:
        raise RunFailure(f"the Hub refused the upload to {repo_id}", str(exc).splitlines()[0][:300],
                         f"check that the token in ${token_env} may write to {repo_id.split('/')[0]}") from None
    return str(getattr(info, "commit_url", info))
