"""The run context: what a command knows about the run it works on that no config field holds
by value — the encryption key (or none) and offline mode — built once at the command's entry (a
CLI command or an API call) and passed down.

    ctx = run_context(cfg, strict=True)     # config.derived; a stage that writes: a missing key stops here
    with ctx.open_run(run_dir, log):                  # a finished key rotation rolled forward first
        ...                                           # sealed files open and are written with ctx.key

Loading a config has no side effects: nothing here happens until an entry point builds and
enters a context. Inside ``open_run`` (or ``active``) the context is the one ``privacy.crypto``
reads and writes with; it is held in a context variable, so it ends with the block, is its own
in every thread a server starts with ``contextvars.copy_context``, and two runs in one process
(tests, notebooks) never see each other's key. Offline mode stays what the Hugging Face libraries
read, environment variables: the entry sets them once (``privacy.offline``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmkit.privacy.crypto import Key


@dataclass(frozen=True)
class RunContext:
    """``key_env``: privacy.encryption_key_env (None: the run is plain); ``key``: the key read from
    that variable (None while it is not set: reading a sealed file or writing one then fails with
    the clear error); ``offline``: privacy.offline."""

    key_env: str | None = None
    key: Key | None = None
    offline: bool = False

    @classmethod
    def plain(cls) -> RunContext:
        """No key, not offline: what a command on a plain model directory uses."""
        return cls()

    @classmethod
    def of(cls, key_env: str | None, offline: bool = False, environ: Mapping[str, str] | None = None,
           strict: bool = False) -> RunContext:
        """The context of a run whose key is in the variable ``key_env`` (None: plain). ``strict`` (a
        stage that writes): a configured key that is not set is an error now, before any work.
        With a config or a run directory at hand: ``config.derived.run_context(cfg)``,
        ``RunDir(path).run_context()``."""
        from llmkit.privacy.crypto import key_from_env

        environ = os.environ if environ is None else environ
        key = None
        if key_env is not None and (strict or environ.get(key_env, "").strip()):
            key = key_from_env(key_env, environ)
        return cls(key_env, key, offline)

    @property
    def encrypted(self) -> bool:
        """Whether the run is encrypted (whether or not its key is present)."""
        return self.key_env is not None

    def write_key(self) -> Key | None:
        """The key files are written with (None: plain), after checking a configured key is present."""
        if self.key_env is not None and self.key is None:
            from llmkit.privacy.crypto import key_from_env

            key_from_env(self.key_env)  # raises the clear error
        return self.key

    @contextlib.contextmanager
    def active(self) -> Iterator[RunContext]:
        """This context for what the block reads and writes; offline switches set (once, for this
        process and what it starts)."""
        if self.offline:
            from llmkit.privacy.offline import apply

            apply(True)
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    @contextlib.contextmanager
    def open_run(self, root: str | Path, log: Callable[[str], None] = lambda _: None) -> Iterator[RunContext]:
        """``active``, on a run directory: an encrypted run's key rotation that was killed after its
        commit is finished first (``privacy.rotate.recover``), so no stage reads a mix of keys."""
        with self.active():
            if self.encrypted and Path(root).is_dir():
                from llmkit.privacy.rotate import recover

                recover(Path(root), log)
            yield self


_current: contextvars.ContextVar[RunContext] = contextvars.ContextVar("llmkit_run_context", default=RunContext())


def current() -> RunContext:
    """The context of the block being run (a plain one outside any)."""
    return _current.get()
