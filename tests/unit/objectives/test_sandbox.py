"""The python_asserts sandbox: an answer's code cannot read outside its temporary directory, open a
socket, or run past its time and memory limits; and the reward scores passing and failing code."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from llmkit.config.schema import RewardConfig, RlConfig
from llmkit.objectives import sandbox
from llmkit.objectives.rewards import Answer, Rewards, program_of

pytestmark = pytest.mark.skipif(sandbox.available() is not None, reason=f"no sandbox here: {sandbox.available()}")


def test_code_runs_and_its_asserts_decide() -> None:
    assert sandbox.run("def f(x):\n    return x * 2\nassert f(3) == 6\n", 10, 256).passed
    failed = sandbox.run("def f(x):\n    return x + 2\nassert f(3) == 6\n", 10, 256)
    assert not failed.passed and "AssertionError" in failed.output


def test_cannot_read_outside_its_directory(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the run's data")
    for path in (str(secret), "/etc/passwd", str(Path(__file__).resolve()), "/proc/1/environ"):
        probe = f"import os\np = {path!r}\nassert not os.path.exists(p), 'visible: ' + p\n"
        outcome = sandbox.run(probe, 10, 256)
        assert outcome.passed, outcome.output
    # the temporary directory itself is writable, and the only writable place
    outcome = sandbox.run("open('/work/out.txt', 'w').write('x')\ntry:\n    open('/usr/x', 'w')\n"
                          "except OSError:\n    pass\nelse:\n    raise SystemExit('wrote to /usr')\n", 10, 256)
    assert outcome.passed, outcome.output


def test_cannot_open_a_socket() -> None:
    """A server listens on 127.0.0.1 outside; the sandboxed code cannot reach it (nor anything)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted: list[object] = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    try:
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        outcome = sandbox.run(code, 10, 256)
        assert not outcome.passed and "OSError" in outcome.output or "Error" in outcome.output, outcome.output
        time.sleep(0.2)
        assert not accepted
    finally:
        server.close()


def test_time_limit_kills_it() -> None:
    start = time.monotonic()
    outcome = sandbox.run("while True:\n    pass\n", 1.0, 256)
    assert not outcome.passed and outcome.timed_out
    assert time.monotonic() - start < 10
    # children it starts die with it
    outcome = sandbox.run("import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)\n", 1.0, 256)
    assert outcome.timed_out and outcome.seconds < 10


def test_memory_limit_stops_it() -> None:
    outcome = sandbox.run("x = bytearray(512 * 1024 * 1024)\n", 10, 64)
    assert not outcome.passed and "MemoryError" in outcome.output


def test_python_asserts_reward_scores_answers() -> None:
    rl = RlConfig(rewards=[RewardConfig(function="python_asserts", timeout_s=5, memory_mb=128)])
    rewards = Rewards(rl)
    example = {"asserts": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}
    good = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    bad = "def add(a, b):\n    return a - b\n"
    hostile = "import os\nos.remove('/work/main.py')\nopen('/etc/passwd').read()\n"
    answers = [Answer("p", text, example, 10, True) for text in (good, bad, hostile)]
    totals, per = rewards.score(answers)
    assert totals == [1.0, 0.0, 0.0]
    assert program_of(good, example["asserts"]).startswith("def add(a, b):")


def test_without_namespaces_python_asserts_is_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where namespaces do not work, the reward is refused with the reason; allow_unsandboxed runs
    the code with the limits and a temporary directory only (it then passes or fails as its asserts say)."""
    from llmkit.errors import ConfigError
    from llmkit.objectives.rewards import check_sandbox

    monkeypatch.setattr(sandbox, "available", lambda: "unprivileged user namespaces are disabled")
    strict = RlConfig(rewards=[RewardConfig(function="python_asserts")])
    with pytest.raises(ConfigError, match="cannot sandbox") as err:
        check_sandbox(strict)
    assert "namespaces are disabled" in err.value.detail
    loose = RlConfig(rewards=[RewardConfig(function="python_asserts", allow_unsandboxed=True)])
    check_sandbox(loose)
    example = {"asserts": "assert f() == 1"}
    totals, _ = Rewards(loose).score([Answer("p", "def f():\n    return 1\n", example, 5, True),
                                      Answer("p", "def f():\n    return 2\n", example, 5, True)])
    assert totals == [1.0, 0.0]
