"""The project's Dockerfile, checked without Docker (no daemon and no registry here: the image is not
built by this suite). What can go stale is checked: the files it copies exist and are not excluded
by .dockerignore, the torch it pins is the one CI installs, and it installs the package's extras."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    out = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest))
    return out


def test_known_instructions_and_copied_files_exist() -> None:
    known = {"FROM", "ENV", "ARG", "RUN", "WORKDIR", "COPY", "USER", "ENTRYPOINT", "CMD"}
    steps = instructions()
    assert steps[0][0] == "FROM" and {w for w, _ in steps} <= known
    ignored = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip()]
    for word, rest in steps:
        if word == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
                assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src} is in .dockerignore"


def test_torch_pin_matches_ci_and_extras_installed() -> None:
    text = (REPO / "Dockerfile").read_text()
    pinned = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)  # type: ignore[union-attr]
    assert f"torch=={pinned}" in (REPO / ".ci" / "run").read_text()
    assert 'pip install ".[all]"' in text and "USER llmkit" in text
