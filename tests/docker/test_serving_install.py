"""The CPU image's install, built in a fresh virtual environment the way its Dockerfile
builds it: the CLI serves, and neither torch nor the offline-only libraries (lightgbm,
scipy, scikit-learn, pyarrow) are there: the serving install holds what serving imports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a fresh `pip install '.[serve]'`: a minute or more

SITE_PACKAGES_BUDGET_MB = 450
"""Upper bound on the serving install's site-packages (docker/README.md "Image size" has
the measured size and how to measure it; docs/deployment.md the operator's view): 436 MB,
polars' runtime 178 MB and onnxruntime 80 MB of it. A dependency that drags in torch,
CUDA libraries or the offline stack breaks it."""

OFFLINE_ONLY = ("torch", "lightgbm", "scipy", "sklearn", "pyarrow")
"""Modules the service never imports (pyproject.toml keeps them out of the core and the
`serve` extra): training's (torch, lightgbm), the offline tools' (scipy, scikit-learn) and
pyarrow, which nothing imports."""

OFFLINE_ONLY_DISTRIBUTIONS = (
    "torch",
    "lightgbm",
    "scipy",
    "scikit_learn",
    "pyarrow",
    "joblib",  # scikit-learn's
    "threadpoolctl",  # scikit-learn's
    "nvidia",
    "triton",
)


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3.*/site-packages")
    return found


def size_mb(folder: Path) -> float:
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return total / 1e6


def test_queryrec_serve_help_runs(serving_venv: Path) -> None:
    done = subprocess.run(
        [str(serving_venv / "bin" / "queryrec"), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "--bundle" in done.stdout and "--workers" in done.stdout


def test_torch_is_not_installed(serving_venv: Path) -> None:
    done = subprocess.run(
        [str(serving_venv / "bin" / "python"), "-c", "import torch"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "No module named 'torch'" in done.stderr, done.stderr
    installed = {p.name.lower() for p in site_packages(serving_venv).iterdir()}
    assert not {name for name in installed if name.startswith(("torch", "nvidia", "triton"))}


@pytest.mark.parametrize("module", OFFLINE_ONLY)
def test_offline_only_module_is_not_installed(serving_venv: Path, module: str) -> None:
    python = str(serving_venv / "bin" / "python")
    find = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is not None)"
    done = subprocess.run([python, "-c", find], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{module} is installed in the serving venv: {done.stderr}"


def test_no_offline_only_distribution_is_installed(serving_venv: Path) -> None:
    installed = {p.name.lower() for p in site_packages(serving_venv).glob("*.dist-info")}
    found = {name for name in installed if name.startswith(OFFLINE_ONLY_DISTRIBUTIONS)}
    assert not found, sorted(found)


def test_service_modules_import_and_health_probe_runs(serving_venv: Path) -> None:
    python = str(serving_venv / "bin" / "python")
    imports = "import service.transport.server, service.transport.run, service.transport.healthcheck, onnxruntime, redis, hiredis"
    done = subprocess.run([python, "-c", imports], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # Nothing listens on port 1: the probe answers "no connection" (exit 2).
    probe = [
        python,
        "-m",
        "service.transport.healthcheck",
        "--addr",
        "127.0.0.1:1",
        "--timeout",
        "2",
    ]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr


def test_site_packages_size_within_budget(serving_venv: Path) -> None:
    size = size_mb(site_packages(serving_venv))
    print(f"serving install: site-packages {size:.0f} MB")
    assert size <= SITE_PACKAGES_BUDGET_MB, f"{size:.0f} MB"


def test_every_distribution_came_as_a_published_wheel(serving_venv: Path) -> None:
    """No dependency was compiled at install time, so the image's build stage needs no
    compiler (and the final stage, a copy of the venv, has none): every compiled wheel
    is a manylinux one, never a local `linux_x86_64` build of an sdist."""
    built_here = []
    for wheel in site_packages(serving_venv).glob("*.dist-info/WHEEL"):
        tags = [
            line.split(":", 1)[1].strip()
            for line in wheel.read_text().splitlines()
            if line.startswith("Tag:")
        ]
        if any(tag.endswith("-linux_x86_64") or tag.endswith("-linux_aarch64") for tag in tags):
            built_here.append(wheel.parent.name)
    assert built_here == []
