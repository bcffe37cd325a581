"""The studio's rules against hostile input, over a real socket: the Host, key, CSRF and Origin
checks, paths held inside the workspace (``..``, absolute paths, symlinks), upload limits (nothing
left behind, nothing replaced), signed file links, and the page's policy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
from .conftest import Studio, start_studio, stop_studio, tiny_yaml


def test_the_page_is_one_file_with_a_strict_policy_and_no_other_origin(studio: Studio) -> None:
    resp = httpx.get(studio.url + "/", timeout=30)
    policy = resp.headers["content-security-policy"]
    assert resp.status_code == 200 and "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert "script-src 'sha256-" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert resp.headers["x-frame-options"] == "DENY" and resp.headers["cache-control"] == "no-store"
    assert "http://" not in resp.text.replace("http://www.w3.org/2000/svg", "") and "https://" not in resp.text
    assert ".innerHTML" not in resp.text  # run, log and model text go in as text only


def test_a_page_elsewhere_cannot_reach_a_loopback_studio_through_another_host_name(studio: Studio) -> None:
    resp = httpx.get(studio.url + "/api/runs", headers={"Host": "attacker.example"}, timeout=30)
    assert resp.status_code == 421 and "127.0.0.1" in resp.json()["error"]["fix"]


def test_state_changing_requests_need_post_the_csrf_token_and_this_origin(studio: Studio) -> None:
    body = {"yaml": tiny_yaml("x")}
    assert httpx.post(studio.url + "/api/validate", json=body, timeout=30).status_code == 403
    wrong = httpx.post(studio.url + "/api/validate", json=body, headers={"X-Studio-CSRF": "guess"}, timeout=30)
    assert wrong.status_code == 403 and "CSRF" in wrong.json()["error"]["message"]
    elsewhere = studio.post("/api/validate", body, headers={**studio.headers(), "Origin": "http://attacker.example"})
    assert elsewhere.status_code == 403
    same = studio.post("/api/validate", body, headers={**studio.headers(), "Origin": studio.url})
    assert same.status_code == 200 and same.json()["ok"]
    assert httpx.put(studio.url + "/api/runs", headers=studio.headers(), timeout=30).status_code == 405
    assert httpx.delete(studio.url + "/api/runs/x", headers=studio.headers(), timeout=30).status_code == 405
    assert studio.get("/api/runs/x/stop").status_code == 405  # a GET never changes anything


def test_bodies_that_are_not_json_objects_are_refused_clearly(studio: Studio) -> None:
    for raw in (b"not json", b"[1, 2]", b'"text"'):
        resp = httpx.post(studio.url + "/api/validate", content=raw, headers=studio.headers(), timeout=30)
        assert resp.status_code == 400 and resp.json()["error"]["message"]
    assert studio.post("/api/validate", {"yaml": 3}).status_code == 400
    huge = httpx.post(studio.url + "/api/validate", content=b"x" * (2 << 20), headers=studio.headers(), timeout=30)
    assert huge.status_code == 413


def test_no_path_outside_the_workspace_is_read_or_written(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (workspace / "escape").symlink_to(tmp_path)
    (workspace / "inside.txt").write_text("a corpus\n" * 50)
    s = start_studio(workspace)
    try:
        for path in ("../secret.txt", str(secret), "escape/secret.txt", "~/secret.txt", "inside.txt/../../secret.txt"):
            resp = s.post("/api/compose", {"name": "r", "data_path": path})
            assert resp.status_code in (400, 403), (path, resp.text)
            assert "workspace" in json.dumps(resp.json()), path
        assert s.post("/api/compose", {"name": "r", "data_path": "inside.txt"}).json()["ok"]
        # the same through a config's own keys, and a run directory elsewhere
        for sections in ({"data": {"source": "text", "path": str(secret)}},
                         {"data": {"source": "text", "path": "escape/secret.txt"}},
                         {"data": {"source": "jsonl", "path": "../secret.txt"}}):
            verdict = s.post("/api/validate", {"yaml": tiny_yaml("r", **sections)}).json()
            assert not verdict["ok"] and "workspace" in json.dumps(verdict["problems"]), sections
        away = tiny_yaml("r").replace("runs_root: runs", f"runs_root: {tmp_path}")
        assert "runs_root" in json.dumps(s.post("/api/validate", {"yaml": away}).json()["problems"])
        for name in ("..", "../r", ".hidden", "a/b", "x" * 65):
            assert s.post("/api/validate", {"yaml": tiny_yaml(name)}).json()["ok"] is False, name
            assert s.post("/api/runs", {"yaml": tiny_yaml(name)}).status_code in (400, 403), name
        for route in ("/api/runs/..%2F..%2Fsecret", "/api/runs/%2e%2e", "/api/runs/escape"):
            assert s.get(route).status_code in (400, 403, 404), route
        assert s.post("/api/chat/open", {"run": "../ws", "step": None}).status_code in (400, 403)
        assert secret.read_text() == "not yours" and sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt", "ws"]
    finally:
        stop_studio(s)


def test_uploads_have_a_size_limit_leave_nothing_behind_and_never_replace_a_file(tmp_path: Path) -> None:
    s = start_studio(tmp_path, "--max-upload-mb", "1")
    try:
        ok = httpx.post(s.url + "/api/upload?name=corpus.txt", content=b"hello\n" * 10, headers=s.headers(), timeout=30)
        assert ok.status_code == 200 and ok.json()["path"] == "uploads/corpus.txt"
        again = httpx.post(s.url + "/api/upload?name=corpus.txt", content=b"other", headers=s.headers(), timeout=30)
        assert again.status_code == 409 and (tmp_path / "uploads" / "corpus.txt").read_bytes() == b"hello\n" * 10
        big = httpx.post(s.url + "/api/upload?name=big.txt", content=b"x" * (2 << 20), headers=s.headers(), timeout=30)
        assert big.status_code == 413

        def chunks():  # no Content-Length: the limit holds on the bytes as they arrive
            for _ in range(3):
                yield b"y" * (600 << 10)

        streamed = httpx.post(s.url + "/api/upload?name=streamed.txt", content=chunks(), headers=s.headers(), timeout=30)
        assert streamed.status_code == 413
        for bad in ("../x.txt", ".hidden", "a/b.txt", "%2e%2e%2fx"):
            assert httpx.post(s.url + f"/api/upload?name={bad}", content=b"z", headers=s.headers(),
                              timeout=30).status_code in (400, 403, 404), bad
        assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == ["corpus.txt"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["uploads"]
    finally:
        stop_studio(s)


def test_off_loopback_the_studio_needs_a_key_and_every_request_checks_it(tmp_path: Path) -> None:
    refused = subprocess.run([sys.executable, "-m", "llmkit", "studio", "--host", "0.0.0.0", "--workspace", str(tmp_path)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--api-key-env" in refused.stderr
    key = "studio-key-0123456789abcdef"
    s = start_studio(tmp_path, "--api-key-env", "STUDIO_KEY", env={"STUDIO_KEY": key})
    try:
        assert httpx.get(s.url + "/", timeout=30).status_code == 200  # the page holds no data; it asks for the key
        for path in ("/api/info", "/api/runs", "/api/runs/x", "/api/runs/x/events"):
            assert httpx.get(s.url + path, headers=s.headers(), timeout=30).status_code == 401, path
            assert httpx.get(s.url + path, headers={**s.headers(), "Authorization": "Bearer wrong"},
                             timeout=30).status_code == 401, path
        assert httpx.post(s.url + "/api/validate", json={"yaml": ""}, headers=s.headers(), timeout=30).status_code == 401
        s.key = key
        assert s.get("/api/info").status_code == 200 and s.get("/api/runs").json() == []
    finally:
        stop_studio(s)


def test_runs_made_from_the_cli_are_listed_and_file_links_are_signed_and_sandboxed(studio: Studio) -> None:
    run = studio.workspace / "runs" / "cli-run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text(tiny_yaml("cli-run"))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"kind": "train", "step": s, "loss": 5.0 - s / 10,
                                                           "lr": 1e-3, "elapsed_s": s}) + "\n" for s in range(1, 11))
                                     + '{"kind": "train", "step": 11, "lo')  # a line being written
    (run / "report.html").write_text("<html><script>fetch('/api/runs')</script>report</html>")
    sharded = run / "checkpoints" / "step-000005"
    (sharded / "dcp").mkdir(parents=True)
    (sharded / "COMMITTED").write_text("")
    listed = [r for r in studio.get("/api/runs").json() if r["name"] == "cli-run"]
    assert [(r["name"], r["status"], r["step"], r["total"], r["loss"]) for r in listed] == [("cli-run", "done", 10, 40, 4.0)]
    assert listed[0]["spark"][0] == 4.9
    link = studio.post("/api/runs/cli-run/link", {"what": "report"}).json()["url"]
    report = httpx.get(studio.url + link, timeout=30)  # no key, no token header: the link is the credential
    assert report.status_code == 200 and report.headers["content-security-policy"].startswith("sandbox")
    forged = link[:-4] + ("0000" if not link.endswith("0000") else "1111")
    assert httpx.get(studio.url + forged, timeout=30).status_code == 403
    assert studio.post("/api/runs/cli-run/link", {"what": "export", "file": "../config.yaml"}).status_code == 404
    assert studio.post("/api/runs/cli-run/export", {"format": "gguf", "quant": "q1"}).status_code == 400
    assert studio.post("/api/runs/cli-run/export", {"format": "gguf", "push_to_hub": "../x"}).status_code == 400
    assert studio.post("/api/runs/cli-run/stop").status_code == 409
    listed = studio.run("cli-run")["checkpoints"]
    assert listed[0]["step"] == 5 and listed[0]["sharded"] and "several processes" in listed[0]["chat"]
    refused = studio.post("/api/chat/open", {"run": "cli-run", "step": 5})
    assert refused.status_code == 400 and "sharded" in refused.json()["error"]["message"]
    assert studio.post("/api/chat/open", {"run": "cli-run", "step": 7}).status_code == 400  # no such checkpoint


def test_a_job_that_died_shows_failed_with_its_last_log_lines(studio: Studio) -> None:
    run = studio.workspace / "runs" / "dead"
    (run / "studio" / "jobs").mkdir(parents=True)
    (run / "config.yaml").write_text(tiny_yaml("dead"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run / "studio" / "jobs" / "train.json").write_text(json.dumps({
        "kind": "train", "status": "running", "phase": "training", "pid": gone.pid, "proc_start": "1",
        "created": time.time(), "commands": []}))
    (run / "studio" / "jobs" / "train.log").write_text("step 3/40 | loss 5.1\nKilled\n")
    d = studio.run("dead")
    assert d["status"] == "failed" and d["jobs"]["train"]["log_tail"][-1] == "Killed"
    assert "died" in d["jobs"]["train"]["reason"] and d["busy"] is None


def test_the_plan_is_llmkits_own_for_the_config(studio: Studio) -> None:
    composed = studio.post("/api/compose", {"preset": "tiny", "name": "p", "max_steps": 60}).json()
    assert composed["ok"] and "max_steps: 60" in composed["yaml"]
    bad = studio.post("/api/validate", {"yaml": composed["yaml"].replace("max_steps: 60", "max_steps: -1")}).json()
    assert not bad["ok"] and bad["problems"][0]["path"] == "train.max_steps"
    plan = studio.post("/api/plan", {"yaml": composed["yaml"]}).json()
    assert plan["recommendations"][0]["fits"] and plan["parameters"] > 0
    assert any(r["device"] == "this-cpu" for r in plan["candidates"])


def test_without_its_packages_the_studio_says_which_extra_to_install(tmp_path: Path) -> None:
    for name in ("fastapi", "starlette", "uvicorn"):  # as if the studio extra were not installed
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "llmkit", "studio", "--port", "0", "--workspace", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 3 and "pip install 'llmkit[studio]'" in out.stderr and "Traceback" not in out.stderr
