"""The chat page at `/`, used in a real headless Chromium (Debian's, driven by playwright): streamed
answers, Stop (the server stops generating), the API key kept in page memory, model output shown
as text, a strict Content-Security-Policy, and no request beyond the server."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import CHROMIUM, NO_CHROMIUM
from .conftest import Server, start_server, stop_server

KEY = "page-key-0123456789abcdef"

pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)]


@pytest.fixture(scope="module")
def slow_server(model_dir: Path) -> Iterator[Server]:
    """Decoding slowed to 80 ms a step, so a person (or a test) can press Stop mid-answer."""
    s = start_server(model_dir, env={"LLMKIT_FAULT": "engine:sleep=0.08"})
    yield s
    stop_server(s)


def gauge(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def open_page(browser: Any, server: Server) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url + "/")
    return page, requests


def wait_js(page: Any, expression: str, timeout: float = 30) -> None:
    """Poll a JS expression from outside the page (page.wait_for_function evaluates strings inside it,
    which the page's policy rightly forbids)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.evaluate(expression):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {expression}")


def artifact(page: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path))
    folder = os.environ.get("LLMKIT_TEST_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / name)


def test_page_is_one_file_with_a_strict_policy(server: Server) -> None:
    resp = httpx.get(server.url + "/", timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and resp.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", resp.text)  # nothing from elsewhere
    assert ".innerHTML" not in resp.text and "localStorage" not in resp.text and "sessionStorage" not in resp.text


def test_ask_stream_and_stop(browser: Any, slow_server: Server, tmp_path: Path) -> None:
    page, requests = open_page(browser, slow_server)
    wait_js(page, "document.getElementById('model').textContent === 't'", 20)
    # every change of the answer's text is recorded: a streamed answer grows in steps
    page.evaluate("""window.seen = [];
        new MutationObserver(() => { const t = document.querySelector('.assistant .text');
          if (t) window.seen.push(t.textContent.length); })
        .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});""")
    page.click("#settings summary")  # open the settings, as a person would
    page.fill("#temperature", "0")
    page.fill("#input", "The for statement")
    page.press("#input", "Enter")
    page.wait_for_selector(".assistant .stats", timeout=60000)
    first = page.inner_text(".assistant .stats")
    assert "first token" in first and "tokens/s" in first, first
    lengths = page.evaluate("window.seen")
    assert len(set(lengths)) >= 3, lengths  # tokens arrived one after another
    artifact(page, "chat-page-answer.png", tmp_path)

    page.click("#clear")  # a new conversation (the test model's context is 64 tokens)
    page.fill("#input", "A class is")
    page.press("#input", "Enter")
    wait_js(page, "document.querySelector('.assistant .text')?.textContent.length > 0", 30)
    assert gauge(slow_server, "llmkit_active_requests") == 1
    page.click("#stop")
    wait_js(page, "document.querySelectorAll('.assistant .stats').length === 1", 30)
    assert "stopped by you" in page.inner_text(".assistant .stats")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (gauge(slow_server, "llmkit_active_requests")
                                           or gauge(slow_server, "llmkit_engine_requests")):
        time.sleep(0.1)
    assert gauge(slow_server, "llmkit_active_requests") == 0 and gauge(slow_server, "llmkit_engine_requests") == 0
    assert requests and all(u.startswith(slow_server.url + "/") for u in requests), requests
    page.close()


def test_model_output_is_text_never_markup(browser: Any, server: Server, tmp_path: Path) -> None:
    page, requests = open_page(browser, server)
    wait_js(page, "document.getElementById('model').textContent === 't'", 20)
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold</b>'
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {"content": hostile}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    # a reply such as a model could write, delivered as the server would stream it
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, body=body,
                                                                     headers={"content-type": "text/event-stream"}))
    page.fill("#input", "say something dangerous")
    page.press("#input", "Enter")
    page.wait_for_selector(".assistant .stats", timeout=20000)
    assert page.inner_text(".assistant .text") == hostile  # shown as typed
    assert page.evaluate("window.pwned") is None
    assert page.evaluate("document.querySelectorAll('.assistant img, .assistant script, .assistant b').length") == 0
    artifact(page, "chat-page-markup-as-text.png", tmp_path)
    page.close()


def test_api_key_is_asked_for_and_kept_in_memory(browser: Any, model_dir: Path, tmp_path: Path) -> None:
    keyed = start_server(model_dir, "--api-key-env", "LLMKIT_PAGE_KEY", env={"LLMKIT_PAGE_KEY": KEY})
    try:
        page, _ = open_page(browser, keyed)
        page.wait_for_selector("#keybox:not([hidden])", timeout=20000)
        page.fill("#key", "wrong")
        page.click("#keyok")
        wait_js(page, "document.getElementById('model').textContent === 'wrong API key'", 20)
        page.fill("#key", KEY)
        page.click("#keyok")
        wait_js(page, "document.getElementById('model').textContent === 't'", 20)
        page.fill("#input", "The for statement")
        page.press("#input", "Enter")
        page.wait_for_selector(".assistant .stats", timeout=60000)
        assert "first token" in page.inner_text(".assistant .stats")
        stored = page.evaluate("JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage), "
                               "document.cookie, document.documentElement.outerHTML.includes(%r)])" % KEY)
        assert json.loads(stored) == [[], [], "", False]  # the key is nowhere but in the script's memory
        page.close()
    finally:
        stop_server(keyed)


def test_no_ui_turns_the_page_off(model_dir: Path) -> None:
    s = start_server(model_dir, "--no-ui")
    try:
        assert httpx.get(s.url + "/", timeout=30).status_code == 404
    finally:
        stop_server(s)
