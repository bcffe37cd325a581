"""The main job a new user runs first: `llmkit quickstart`, then chat, eval, report, generate."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the whole quickstart

GUARD = """
import ipaddress, os, socket

_log = os.environ["LLMKIT_GUARD_LOG"]
def _local(host):
    host = str(host).split("%")[0]
    if host in ("localhost", "", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
def _refuse(what):
    with open(_log, "a") as f:
        f.write(what + "\\n")
    raise OSError("offline guard: " + what)
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse("connect %r" % (address,))
    return _connect(self, address)
def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse("connect_ex %r" % (address,))
    return _connect_ex(self, address)
def getaddrinfo(host, *args, **kw):
    if host is not None and not _local(host if isinstance(host, str) else host.decode()):
        _refuse("resolve %r" % (host,))
    return _getaddrinfo(host, *args, **kw)
socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
"""


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart with privacy.offline, in a process (and children) whose every socket beyond
    127.0.0.1 and every name lookup fails and is logged: the log must stay empty."""
    cwd = tmp_path_factory.mktemp("qs")
    guard = tmp_path_factory.mktemp("guard")
    (guard / "sitecustomize.py").write_text(GUARD)
    log = guard / "attempts.log"
    log.touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")])),
           "LLMKIT_GUARD_LOG": str(log)}
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.getaddrinfo('huggingface.co', 443)"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert probe.returncode != 0 and "resolve 'huggingface.co'" in log.read_text()  # the guard works (nothing sent)
    log.write_text("")
    out = subprocess.run([sys.executable, "-m", "llmkit", "quickstart", "--minutes", "1", "--offline"], cwd=cwd,
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "llmkit chat runs/quickstart" in out.stdout
    assert "held-out questions (phrasings never trained on):" in out.stdout
    assert log.read_text() == "", f"the offline quickstart tried to reach the network: {log.read_text()[:2000]}"
    assert "offline: on" in out.stdout  # doctor's privacy line
    return cwd / "runs" / "quickstart"


def test_quickstart_ran_offline(quickstart_dir: Path) -> None:
    import yaml

    assert yaml.safe_load((quickstart_dir / "config.yaml").read_text())["privacy"]["offline"] is True
    assert json.loads((quickstart_dir / "manifest.json").read_text())["privacy"] == \
        {"pii": "off", "offline": True, "encryption": None, "dp": None}
    assert "<h2>Privacy</h2><table><tr><th>offline</th><td>on</td>" in (quickstart_dir / "report.html").read_text()


def test_quickstart_leaves_a_complete_run(quickstart_dir: Path) -> None:
    for name in ("final/config.json", "final/model.safetensors", "final/tokenizer.json", "metrics.jsonl",
                 "report.html", "eval.json", "pretrain/final/model.safetensors", "manifest.json"):
        assert (quickstart_dir / name).exists(), name
    summary = json.loads((quickstart_dir / "quickstart.json").read_text())
    assert summary["pretrained_val_ppl"] * 5 <= summary["untrained_val_ppl"]  # a clear learning signal
    assert summary["sft_val_loss_after"] < summary["sft_val_loss_before"]
    held_out = json.loads((quickstart_dir / "eval.json").read_text())["held_out"]
    assert len(held_out) >= 20 and summary["held_out_score"] == sum(a["right"] for a in held_out) / len(held_out)
    assert "Held-out questions:" in (quickstart_dir / "report.html").read_text()


def test_chat_answers_and_exits_on_eof(quickstart_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "llmkit", "chat", str(quickstart_dir), "--temperature", "0",
                          "--max-tokens", "30"], input="What is the `for` statement?\n", capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    answer = out.stdout.split("model> ", 1)[1]
    assert len(answer.strip()) > 5


def test_generate_and_eval(quickstart_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "llmkit", "generate", str(quickstart_dir), "--chat", "--prompt",
                          "What is the `while` statement?", "--temperature", "0", "--max-tokens", "20"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "llmkit", "eval", str(quickstart_dir), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["val_ppl"] > 1 and 0 < metrics["bits_per_byte"] < 20
    # the held-out questions are asked again, greedily: the same score as the quickstart printed
    assert metrics["held_out_score"] == json.loads((quickstart_dir / "quickstart.json").read_text())["held_out_score"]


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("src", "href") and value:
                self.refs.append(value)


def test_report_is_self_contained_and_its_plots_parse(quickstart_dir: Path) -> None:
    html = (quickstart_dir / "report.html").read_text()
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) >= 4
    for svg in svgs:
        root = ET.fromstring(svg)  # every plot is well-formed SVG
        assert root.tag.endswith("svg") and (root.findall(".//{http://www.w3.org/2000/svg}polyline")
                                              or root.findall(".//{http://www.w3.org/2000/svg}circle"))
    collector = _Collect()
    collector.feed(html)
    assert collector.refs == [] and "<script" not in html  # nothing fetched from anywhere
    for section in ("Curves", "Evaluation and samples", "Environment", "Config"):
        assert section in html


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(quickstart_dir: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1100,2400",
                    (quickstart_dir / "report.html").resolve().as_uri()], capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real, non-blank page


def read_until(fd: int, marker: str, timeout_s: float) -> str:
    """Characters from ``fd`` until ``marker`` appears (a prompt comes without a newline)."""
    import os
    import select
    import time

    seen, deadline = "", time.monotonic() + timeout_s
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no {marker!r} within {timeout_s} s; got {seen!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"output ended before {marker!r}; got {seen!r}")
        seen += chunk.decode(errors="replace")
    return seen


def test_chat_ctrl_c_exits_cleanly(quickstart_dir: Path) -> None:
    """Ctrl-C at the prompt prints "bye" and exits 0. stdin stays open until the process has
    exited, so the only way out is the signal (an EOF would end it through the Ctrl-D branch)."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "chat", str(quickstart_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(proc.stdout.fileno(), "you> ", 120)  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        out = proc.stdout.read().decode()  # type: ignore[union-attr]
        err = proc.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        proc.kill()
        proc.stdin.close()  # type: ignore[union-attr]
    assert proc.returncode == 0 and "bye" in out and "Traceback" not in err, (proc.returncode, out, err)


def test_structured_output_from_the_quickstart_model(quickstart_dir: Path) -> None:
    """`parse` with a Pydantic model through the official client returns a valid object from the
    quickstart's chat model (nested object, enum, bounded array, optional field, pattern)."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("llguidance")
    from typing import Literal, Optional

    from pydantic import BaseModel, ConfigDict, Field

    from .serving.conftest import start_server, stop_server

    class Where(BaseModel):
        model_config = ConfigDict(extra="forbid")
        section: str = Field(max_length=16)
        line: int = Field(ge=1, le=999)

    class Statement(BaseModel):
        model_config = ConfigDict(extra="forbid")
        keyword: Literal["for", "while", "if", "try", "with"]
        summary: str = Field(max_length=60)
        tags: list[Literal["loop", "branch", "error", "context"]] = Field(min_length=1, max_length=2)
        where: Where
        note: Optional[str] = Field(None, max_length=12)
        code: str = Field(pattern=r"^PEP [0-9]{1,4}$")

    server = start_server(quickstart_dir, "--served-model-name", "qs")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        for temperature in (0, 0.8):
            out = client.chat.completions.parse(model="qs", response_format=Statement, temperature=temperature, seed=1,
                                                max_tokens=200, messages=[{"role": "user",
                                                                           "content": "Describe the for statement."}])
            assert out.choices[0].finish_reason == "stop"
            assert isinstance(out.choices[0].message.parsed, Statement)
    finally:
        stop_server(server)
