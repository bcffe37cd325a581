"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, enough for huggingface_hub's
``snapshot_download``: repository info by revision, the file tree of a commit, and file downloads
(HEAD for metadata, GET for bytes), with the Hub's error codes for unknown repositories and
revisions and for gated repositories asked without a token. huggingface_hub itself then writes
its cache (blobs, snapshots, refs, tree listings) exactly as it does from the real Hub. For
uploads (``create_repo``, ``upload_folder``): repository creation, pre-upload (every file
"regular", sent inline) and the commit endpoint, which makes a new commit on the branch."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    gated_token: str | None = None  # files only for this bearer token
    private: bool = False
    messages: list[str] = field(default_factory=list)  # commit messages, in order

    def add_commit(self, files: dict[str, bytes], *refs: str) -> str:
        commit = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items()))
                              .encode() + str(len(self.commits)).encode()).hexdigest()
        self.commits[commit] = files
        for ref in refs or ("main",):
            self.refs[ref] = commit
        return commit


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}  # models
        self.datasets: dict[str, Repo] = {}
        self.downloads: list[str] = []
        self.unrouted: list[str] = []  # requests no route answered (to debug a new client)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _error(self, status: int, code: str, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, data: object) -> None:
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _repo(self, repo_id: str, revision: str, store: dict[str, Repo] | None = None
                      ) -> tuple[Repo, str] | None:
                repo = (hub.repos if store is None else store).get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
                    return None
                if repo.gated_token and self.headers.get("authorization") != f"Bearer {repo.gated_token}":
                    self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
                    return None
                commit = repo.refs.get(revision, revision if revision in repo.commits else None)
                if commit is None:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return None
                return repo, commit

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

            def do_POST(self) -> None:  # noqa: N802
                import base64

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
                if parts == ["api", "validate-yaml"]:  # a README's front matter, before a commit
                    import yaml

                    content = json.loads(body)["content"]
                    front = content.split("---")[1] if content.startswith("---") else ""
                    yaml.safe_load(front)  # a malformed card fails the request, as on the Hub
                    self._json({"errors": [], "warnings": []})
                    return
                if parts == ["api", "repos", "create"]:
                    data = json.loads(body)
                    repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                    if repo_id not in hub.repos:
                        repo = Repo(private=bool(data.get("private")) or data.get("visibility") == "private")
                        repo.add_commit({".gitattributes": b"*.safetensors filter=lfs\n"})
                        hub.repos[repo_id] = repo
                    self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id})
                    return
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("preupload", "commit"):
                    found = self._repo(f"{parts[2]}/{parts[3]}", parts[5])
                    if found is None:
                        return
                    repo, commit = found
                    if parts[4] == "preupload":
                        files = json.loads(body)["files"]
                        self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                              for f in files]})
                        return
                    files = dict(repo.commits[commit])
                    message = ""
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "header":
                            message = item["value"].get("summary", "")
                        elif item["key"] == "file":
                            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        elif item["key"] == "deletedFile":
                            files.pop(item["value"]["path"], None)
                    new = repo.add_commit(files, parts[5])
                    repo.messages.append(message)
                    self._json({"commitUrl": f"{hub.url}/{parts[2]}/{parts[3]}/commit/{new}", "commitOid": new,
                                "pullRequestUrl": None})
                    return
                hub.unrouted.append(f"{self.command} {self.path}")
                self._error(404, "EntryNotFound", f"no route {self.path}")

            def do_GET(self) -> None:  # noqa: N802
                parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
                if parts[:2] in (["api", "models"], ["api", "datasets"]) and len(parts) >= 4:
                    store = hub.repos if parts[1] == "models" else hub.datasets
                    repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
                    if not rest or rest[0] in ("revision", "tree"):
                        found = self._repo(repo_id, rest[1] if len(rest) > 1 else "main", store)
                        if found is None:
                            return
                        repo, commit = found
                        files = repo.commits[commit]
                        if not rest or rest[0] == "revision":
                            self._json({"id": repo_id, "sha": commit, "private": repo.private,
                                        "siblings": [{"rfilename": name} for name in files]})
                        else:  # the tree under a path: everything below it, or (not recursive) its children
                            from urllib.parse import parse_qs

                            prefix = "/".join(rest[2:])
                            recursive = parse_qs(urlparse(self.path).query).get("recursive", ["false"])[0] == "true"
                            below = {n: d for n, d in files.items() if not prefix or n.startswith(prefix + "/")}
                            entries: dict[str, dict[str, object]] = {}
                            for name, data in below.items():
                                rel = name[len(prefix) + 1:] if prefix else name
                                if recursive or "/" not in rel:
                                    entries[name] = {"type": "file", "path": name, "size": len(data),
                                                     "oid": hashlib.sha1(data).hexdigest()}
                                if "/" in rel:
                                    dirs = rel.split("/")[:-1]
                                    for depth in range(1 if not recursive else len(dirs)):
                                        d = "/".join(filter(None, [prefix, *dirs[:depth + 1]]))
                                        entries[d] = {"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()}
                            self._json(list(entries.values()))
                        return
                store = hub.repos
                if parts and parts[0] == "datasets":
                    store, parts = hub.datasets, parts[1:]
                if len(parts) >= 5 and parts[2] == "resolve":
                    found = self._repo(f"{parts[0]}/{parts[1]}", parts[3], store)
                    if found is None:
                        return
                    repo, commit = found
                    name = "/".join(parts[4:])
                    data = repo.commits[commit].get(name)
                    if data is None:
                        self._error(404, "EntryNotFound", f"{name} not found")
                        return
                    self.send_response(200)
                    self.send_header("X-Repo-Commit", commit)
                    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command == "GET":
                        hub.downloads.append(f"{parts[0]}/{parts[1]}/{name}")
                        self.wfile.write(data)
                    return
                hub.unrouted.append(f"{self.command} {self.path}")
                self._error(404, "EntryNotFound", f"no route {self.path}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
