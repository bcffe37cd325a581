"""`llmkit privacy`: keys for encryption at rest (keygen, rotate, status of a run)."""

from __future__ import annotations

from pathlib import Path

import typer

privacy_app = typer.Typer(help="Encryption keys of runs: make one, re-encrypt a run, inspect a run.",
                          no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `privacy` group to the app."""
    app.add_typer(privacy_app, name="privacy")


@privacy_app.command("keygen")
def keygen() -> None:
    """Print a new random 256-bit key (base64): put it in the variable privacy.encryption_key_env names."""
    from llmkit.privacy.crypto import new_key

    typer.echo(new_key())


@privacy_app.command("rotate")
def rotate(
    run: Path = typer.Option(..., "--run", help="The run directory (runs/<name>)."),
    new_key_env: str = typer.Option(..., "--new-key-env", help="Variable holding the new key."),
    old_key_env: str = typer.Option(None, "--old-key-env",
                                    help="Variable holding the current key (default: the run's privacy.encryption_key_env)."),
) -> None:
    """Re-encrypt every encrypted file of a run under a new key (staged, then committed: a kill at any
    point leaves the run readable with the old or the new key)."""
    from llmkit.errors import UsageError
    from llmkit.privacy import crypto
    from llmkit.privacy.rotate import rotate as do_rotate
    from llmkit.rundir import RunDir

    cfg = RunDir(run).load_config()
    name = old_key_env or cfg.privacy.encryption_key_env
    if not name:
        raise UsageError(f"{run} does not say which variable holds its key",
                         "its config has no privacy.encryption_key_env", "pass --old-key-env NAME")
    old, new = crypto.key_from_env(name), crypto.key_from_env(new_key_env)
    count = do_rotate(run, old, new, typer.echo)
    typer.echo(f"re-encrypted {count} files of {run}: key id {old.id_hex} -> {new.id_hex}")
    if cfg.privacy.encryption_key_env and cfg.privacy.encryption_key_env != new_key_env:
        typer.echo(f"next: put the new key in {cfg.privacy.encryption_key_env} (the variable the run's config "
                   f"names), e.g. export {cfg.privacy.encryption_key_env}=\"${new_key_env}\"")


@privacy_app.command("status")
def status(run: Path = typer.Argument(..., help="The run directory (runs/<name>).")) -> None:
    """Which files of a run are encrypted, with which key id, and whether the key at hand opens them."""
    from llmkit.privacy import crypto
    from llmkit.rundir import RunDir

    cfg = RunDir(run).load_config()
    env = cfg.privacy.encryption_key_env
    key = None
    if env:
        try:
            key = crypto.key_from_env(env)
        except Exception as exc:  # noqa: BLE001 (shown, not raised: status informs)
            typer.echo(f"key: {exc}".splitlines()[0])
    ids: dict[str, int] = {}
    plain = 0
    for f in sorted(Path(run).rglob("*")):
        rel = f.relative_to(run)
        if not f.is_file() or any(p.startswith(".") for p in rel.parts):
            continue
        if crypto.is_sealed(f):
            kid = crypto.key_id_of(f)
            ids[kid] = ids.get(kid, 0) + 1
        else:
            plain += 1
    typer.echo(f"privacy.encryption_key_env: {env or 'not set'}" + (f" (key id {key.id_hex})" if key else ""))
    for kid, n in ids.items():
        opens = "opens with the key at hand" if key is not None and key.id_hex == kid else "needs another key"
        typer.echo(f"encrypted: {n} files with key id {kid} ({opens})")
    typer.echo(f"plain: {plain} files (config, manifest, metrics, meta and state files hold no data)")
