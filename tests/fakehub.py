"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, enough for huggingface_hub's
``snapshot_download``: repository info by revision, the file tree of a commit, and file downloads
(HEAD for metadata, GET for bytes), with the Hub's error codes for unknown repositories and
revisions and for gated repositories asked without a token. huggingface_hub itself then writes
its cache (blobs, snapshots, refs, tree listings) exactly as it does from the real Hub."""

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
        self.repos: dict[str, Repo] = {}
        self.downloads: list[str] = []
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

            def _repo(self, repo_id: str, revision: str) -> tuple[Repo, str] | None:
                repo = hub.repos.get(repo_id)
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

            def do_GET(self) -> None:  # noqa: N802
                parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                    found = self._repo(f"{parts[2]}/{parts[3]}", parts[5])
                    if found is None:
                        return
                    repo, commit = found
                    files = repo.commits[commit]
                    if parts[4] == "revision":
                        self._json({"id": f"{parts[2]}/{parts[3]}", "sha": commit, "private": False,
                                    "siblings": [{"rfilename": name} for name in files]})
                    else:
                        self._json([{"type": "file", "path": name, "size": len(data),
                                     "oid": hashlib.sha1(data).hexdigest()} for name, data in files.items()])
                    return
                if len(parts) >= 5 and parts[2] == "resolve":
                    found = self._repo(f"{parts[0]}/{parts[1]}", parts[3])
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
