"""The studio used as a person would, in a real headless Chromium driven by playwright: create a
`tiny` run with a 60-step budget, see its plan, start it, watch the step counter and the loss
curve advance, Stop (a checkpoint appears), Resume to the end, chat with the result, export GGUF
and download it; then `llmkit eval` reads the run from the CLI. Screenshots of each page land in
$LLMKIT_TEST_ARTIFACTS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ..conftest import CHROMIUM, NO_CHROMIUM
from .conftest import start_studio, stop_studio

pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)]


def wait_js(page: Any, expression: str, timeout: float = 120) -> Any:
    """Poll an expression from outside the page (the page's policy forbids evaluating strings inside it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(expression)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {expression}")


def shot(page: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    folder = os.environ.get("LLMKIT_TEST_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / name)


def text(page: Any, selector: str) -> str:
    return page.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''")


def test_a_tiny_run_planned_started_watched_stopped_resumed_chatted_with_and_exported(browser: Any, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    studio = start_studio(workspace, env={"LLMKIT_FAULT": "step:sleep=0.1"})
    page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(studio.url + "/#/new")
        wait_js(page, "document.querySelector('#yaml') && document.querySelector('#yaml').value.includes('name:')")
        page.fill("#f-name", "web")
        page.fill("#f-max_steps", "60")
        page.press("#f-max_steps", "Tab")  # change: the config is composed again and validated
        wait_js(page, "document.querySelector('#yaml').value.includes('max_steps: 60') && "
                      "document.querySelector('#problems').textContent.includes('valid: run web')")
        assert page.is_disabled("#start")  # not before the plan is shown
        page.click("#plan-btn")
        wait_js(page, "document.querySelector('#plan-result')")
        assert "this machine" in text(page, "#plan-table") and "yes" in text(page, "#plan-table")
        shot(page, "studio-new-run.png", tmp_path)
        page.click("#start")
        wait_js(page, "location.hash === '#/run/web'")

        wait_js(page, "parseInt((document.querySelector('#r-step') || {}).textContent) >= 5", timeout=180)
        first = int(text(page, "#r-step").split("/")[0])
        wait_js(page, f"parseInt(document.querySelector('#r-step').textContent) > {first}")
        assert "training" in text(page, "#r-status")
        assert page.evaluate("document.querySelectorAll('#charts svg path').length") >= 3  # loss, lr, tokens/s
        shot(page, "studio-run-training.png", tmp_path)

        wait_js(page, "!document.querySelector('#stop').disabled")
        page.click("#stop")
        wait_js(page, "document.querySelector('#r-status').textContent === 'stopped' && "
                      "document.querySelector('#checkpoints')", timeout=120)
        stopped_at = int(text(page, "#r-step").split("/")[0])
        assert 0 < stopped_at < 60 and text(page, "#checkpoints tr:nth-child(2) td") == str(stopped_at)
        shot(page, "studio-run-stopped.png", tmp_path)
        wait_js(page, "!document.querySelector('#resume').disabled")
        page.click("#resume")
        wait_js(page, "document.querySelector('#r-status').textContent === 'done'", timeout=300)
        wait_js(page, "document.querySelector('#r-step').textContent.startsWith('60')")
        shot(page, "studio-run-done.png", tmp_path)
        wait_js(page, "!document.querySelector('#evaluate').disabled")
        page.click("#evaluate")
        wait_js(page, "document.querySelector('#eval') && document.querySelector('#report')", timeout=300)
        assert "val_loss" in text(page, "#eval")
        shot(page, "studio-run-evaluated.png", tmp_path)
        with page.expect_popup() as popup:
            page.click("#report")
        report = popup.value
        report.wait_for_load_state()
        assert "web" in report.content() and report.url.startswith(studio.url + "/files/")
        report.close()

        page.click("#chat-link")
        wait_js(page, "document.querySelector('#prompt')")
        page.fill("#prompt", "The for statement")
        page.press("#prompt", "Enter")
        wait_js(page, "document.querySelector('.assistant') && document.querySelector('.assistant').dataset.finish",
                timeout=300)
        assert text(page, ".user") == "The for statement"
        page.select_option("#c-b", str(stopped_at))  # side by side: the final model and the stop's checkpoint
        wait_js(page, "document.querySelectorAll('#panes .pane').length === 2")
        page.fill("#prompt", "A class is")
        page.press("#prompt", "Enter")
        wait_js(page, "[...document.querySelectorAll('.assistant')].filter((a) => a.dataset.finish).length === 2",
                timeout=300)
        shot(page, "studio-chat-side-by-side.png", tmp_path)

        page.goto(studio.url + "/#/run/web")
        wait_js(page, "document.querySelector('#x-quant')")
        page.select_option("#x-quant", "q8_0")
        page.click("#export")
        wait_js(page, "document.querySelector('#exports') && document.querySelector('#exports').textContent"
                      ".includes('web-q8_0.gguf')", timeout=300)
        shot(page, "studio-export.png", tmp_path)
        with page.expect_download() as info:
            page.click("[id='dl-web-q8_0.gguf']")
        downloaded = tmp_path / "web.gguf"
        info.value.save_as(str(downloaded))
        assert downloaded.read_bytes()[:4] == b"GGUF"

        page.goto(studio.url + "/#/")
        wait_js(page, "document.querySelector('#runs')")
        assert "done" in text(page, "#runs") and "60 / 60" in text(page, "#runs")
        shot(page, "studio-runs.png", tmp_path)
        assert all(url.startswith(studio.url) for url in requests), [u for u in requests if not u.startswith(studio.url)]
        assert not [e for e in errors if "Content Security Policy" in e], errors
    finally:
        page.close()
        stop_studio(studio)
    cli = subprocess.run([sys.executable, "-m", "llmkit", "eval", "runs/web", "--json"], cwd=workspace,
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert json.loads(cli.stdout)["metrics"]["val_loss"] > 0

    # the same config trained in one go from the CLI logs the same values at every step
    other = tmp_path / "cli" / "runs" / "web"
    other.mkdir(parents=True)
    shutil.copy(workspace / "runs" / "web" / "config.yaml", other / "config.yaml")
    for stage in ("prepare", "train"):
        subprocess.run([sys.executable, "-m", "llmkit", stage, "-c", "runs/web/config.yaml"], cwd=tmp_path / "cli",
                       check=True, capture_output=True, timeout=900)
    assert logged(workspace / "runs" / "web") == logged(other)


def logged(run: Path) -> dict[tuple[str, int], tuple[float, ...]]:
    """Each step's training loss and learning rate and each validation loss (timings and the
    resume record aside)."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "train":
            out[("train", r["step"])] = (r["loss"], r["lr"], r["grad_norm"])
        elif r.get("kind") == "eval":
            out[("eval", r["step"])] = (r["val_loss"],)
    return out
