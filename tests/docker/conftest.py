"""Fixtures of the docker/ tests: the serving install built as the CPU image builds it."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker.files import DOCKER, REPO, copy_sources, read_dockerfile

PIP_TIMEOUT_S = 3600  # a hang, not a budget: the install takes a minute or two from local wheels


def image_build_context(root: Path) -> Path:
    """The CPU image's build stage source tree: exactly the paths its COPY lines take
    from the build context (the repository), placed as they are in the image's WORKDIR."""
    build = read_dockerfile(DOCKER / "Dockerfile").stages[0]
    source = root / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for instruction in build.all("COPY"):
        sources = copy_sources(instruction)
        written = shlex.split(instruction.value)[-1]
        destination = source / written
        for path in sources:
            origin = REPO / path
            if origin.is_dir():  # Docker copies a folder's contents into the destination
                shutil.copytree(origin, destination, ignore=ignore, dirs_exist_ok=True)
            else:
                into = written.endswith("/") or len(sources) > 1
                target = destination / origin.name if into else destination
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    return source


def image_pip_install(dockerfile: Path) -> list[str]:
    """The arguments of the build stage's `pip install` (without --no-cache-dir: the
    test may use the local wheel cache; the image keeps no cache)."""
    build = read_dockerfile(dockerfile).stages[0]
    for instruction in build.all("RUN"):
        words = shlex.split(instruction.value)
        for index, word in enumerate(words[:-1]):
            if word.endswith("/pip") and words[index + 1] == "install":
                end = words.index("&&", index) if "&&" in words[index:] else len(words)
                return [w for w in words[index + 2 : end] if w != "--no-cache-dir"]
    raise AssertionError(f"{dockerfile}: no pip install in the build stage")


@pytest.fixture(scope="session")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding what the CPU image's /opt/venv holds."""
    root = tmp_path_factory.mktemp("serving-image")
    source = image_build_context(root)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    done = subprocess.run(
        [
            str(venv / "bin" / "python"),
            *("-m", "pip", "install", "--quiet"),
            *image_pip_install(DOCKER / "Dockerfile"),
        ],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return venv
