"""Models and tokenizers named by a Hugging Face Hub id, resolved to a complete local snapshot.

``model.from_pretrained`` and ``tokenizer.path`` take a local directory or a Hub id
(``org/name``, optionally ``@revision``: a branch, tag or commit). An id is downloaded with
``huggingface_hub.snapshot_download`` into its cache (``HF_HOME`` / ``HF_HUB_CACHE``), only the
files a model or tokenizer needs: configs, tokenizer files and safetensors weights, never pickle
weights (``.bin``) unless ``model.allow_pickle_weights`` says so. ``HF_HUB_OFFLINE=1`` resolves
from the cache alone. The token is read from the variable named by the config's
``hub_token_env``. The snapshot's commit hash goes into the run's manifest.

A snapshot is used only when it is complete: huggingface_hub writes each file under a temporary
name and renames it when done, refuses a cached snapshot its tree listing says is partial, and
this module checks the files a load needs (config, every shard of a sharded checkpoint, a
tokenizer file) before handing the directory on.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit.errors import EnvironmentProblem, UsageError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_./-]+)?$")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "*.tiktoken", "chat_template.json",
                   "chat_template.jinja", "config.json", "generation_config.json"]
MODEL_FILES = [*TOKENIZER_FILES, "*.safetensors", "model.safetensors.index.json"]
PICKLE_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


@dataclass(frozen=True)
class Source:
    """Where a model or tokenizer reference points: the local directory to load, and for a Hub id
    the repository, the revision asked for and the commit it resolved to."""

    ref: str
    path: Path
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    def manifest(self) -> dict[str, str | None]:
        return {"ref": self.ref, "repo_id": self.repo_id, "revision": self.revision, "commit": self.commit}


RESOLVED: dict[tuple[str, str], Source] = {}
"""What this process resolved, by (ref, kind): the manifest records it."""


def is_hub_id(ref: str) -> bool:
    """``org/name[@revision]`` that is not an existing local path (a local directory always wins)."""
    if ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists():
        return False
    return bool(HUB_ID.match(ref))


def resolve(ref: str, what: Literal["model", "tokenizer"], token_env: str | None = "HF_TOKEN",
            allow_pickle: bool = False, log=None, cache_only: bool = False) -> Source:  # type: ignore[no-untyped-def]
    """The local directory for ``ref``: itself when local, else a complete snapshot of the Hub repo
    (``cache_only``: from the cache alone, as with HF_HUB_OFFLINE)."""
    if not is_hub_id(ref):
        return Source(ref, Path(ref).expanduser())
    from llmkit.optional import require

    require("huggingface_hub", "hub", f"{what} {ref} from the Hugging Face Hub",
            "or download it yourself and give the local directory")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub_errors

    repo_id, _, revision = ref.partition("@")
    revision = revision or "main"
    token = os.environ.get(token_env) if token_env else None
    patterns = MODEL_FILES + (PICKLE_FILES if allow_pickle else []) if what == "model" else TOKENIZER_FILES
    offline = bool(constants.HF_HUB_OFFLINE) or cache_only
    where = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
    token_fix = f"put a token with read access in ${token_env}" if token_env else "set hub_token_env and that variable"
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, token=token or None,
                                      local_files_only=cache_only))
    except hub_errors.GatedRepoError as exc:
        raise EnvironmentProblem(f"{repo_id} is gated: the Hub gives its files only to accounts that accepted its terms",
                                 _first_line(exc), f"accept them on https://huggingface.co/{repo_id}, then "
                                 f"{token_fix}") from None
    except hub_errors.RevisionNotFoundError as exc:
        raise UsageError(f"{repo_id} has no revision {revision!r}", _first_line(exc),
                         "use a branch, tag or commit hash of the repository (no @revision means main)") from None
    except hub_errors.RepositoryNotFoundError as exc:
        raise UsageError(f"no {what} {repo_id!r} on the Hugging Face Hub (or it is private), and no local "
                         f"directory {ref}", _first_line(exc),
                         f"check the id (org/name, as on huggingface.co) or the path; for a private repository "
                         f"{token_fix}") from None
    except hub_errors.IncompleteSnapshotError as exc:
        raise EnvironmentProblem(f"the cached snapshot of {ref} is incomplete (an interrupted download)",
                                 _first_line(exc), "run again with the network to complete it"
                                 + (" (unset HF_HUB_OFFLINE)" if offline else "")) from None
    except hub_errors.LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise EnvironmentProblem(f"{ref} is not in {where} and {why}", _first_line(exc),
                                 "download it once with the network (llmkit prepare does), copy a Hugging Face cache "
                                 "here (HF_HOME), or give a local directory") from None
    except hub_errors.HfHubHTTPError as exc:
        raise EnvironmentProblem(f"the Hugging Face Hub refused {ref}", _first_line(exc),
                                 f"check the id and the token (${token_env})") from None
    commit = path.name if re.fullmatch(r"[0-9a-f]{40}", path.name) else None
    _check_complete(path, ref, what, allow_pickle)
    if log is not None:
        log(f"{what}: {repo_id}@{revision} -> commit {commit or '?'} from the Hugging Face Hub ({path})")
    RESOLVED[(ref, what)] = Source(ref, path, repo_id, revision, commit)
    return RESOLVED[(ref, what)]


def manifest_entries(model_ref: str | None, tokenizer_ref: str | None) -> dict[str, dict[str, str | None]]:
    """The Hub references of a run and the commits they resolved to (this process's resolution, or
    the cache's when another process resolved them; commit null when neither knows)."""
    out: dict[str, dict[str, str | None]] = {}
    for kind, ref in (("model", model_ref), ("tokenizer", tokenizer_ref)):
        if not ref or not is_hub_id(ref):
            continue
        source = RESOLVED.get((ref, kind))  # type: ignore[arg-type]
        if source is None:
            try:
                source = resolve(ref, kind, None, allow_pickle=True, cache_only=True)  # type: ignore[arg-type]
            except (UsageError, EnvironmentProblem):
                repo_id, _, revision = ref.partition("@")
                source = Source(ref, Path(), repo_id, revision or "main", None)
        out[kind] = source.manifest()
    return out


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _check_complete(path: Path, ref: str, what: str, allow_pickle: bool) -> None:
    """The files a load needs are all there (else nothing of the snapshot is used)."""
    names = {p.name for p in path.iterdir()}
    if what == "tokenizer":
        if not {"tokenizer.json", "tokenizer_config.json"} & names:
            raise UsageError(f"{ref} has no tokenizer (no tokenizer.json or tokenizer_config.json)",
                             f"files: {', '.join(sorted(names)[:12]) or 'none'}",
                             "point tokenizer.path at a repository or directory with a tokenizer")
        return
    if "config.json" not in names:
        raise UsageError(f"{ref} is not a transformers model (no config.json)",
                         f"files: {', '.join(sorted(names)[:12]) or 'none'}", "check the repository id")
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in names:
            shards = set(json.loads((path / index).read_text(encoding="utf-8"))["weight_map"].values())
            missing = sorted(shards - names)
            if missing:
                raise EnvironmentProblem(f"{ref}: {len(missing)} weight shard(s) missing from the snapshot",
                                         f"missing: {', '.join(missing[:4])}", "run again with the network to "
                                         "complete the download")
    if not any(n.endswith(".safetensors") for n in names) and not (allow_pickle and any(n.endswith(".bin") for n in names)):
        raise UsageError(f"{ref} has no safetensors weights",
                         "llmkit downloads only safetensors unless allowed: .bin files are pickles, and unpickling "
                         "can run code",
                         "use a repository with safetensors, or set model.allow_pickle_weights: true to load its "
                         ".bin weights (torch.load with weights_only=True)")


def cached_config(ref: str) -> dict[str, Any] | None:
    """A model's config.json without downloading anything: from its local directory, or from a
    Hub id's snapshot in the Hugging Face cache; None when neither has it."""
    if not is_hub_id(ref):
        path = Path(ref).expanduser() / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        repo_id, _, revision = ref.partition("@")
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision or None)
        if not isinstance(found, str):
            return None
        path = Path(found)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
