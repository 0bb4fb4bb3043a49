"""Architecture rules: the import-linter contracts of pyproject.toml hold, and they bite.

The contracts (layers of the rooms, the torch-free service and feature room, clients
through the stubs only, no cycles in the diffusion job, independent paper parts) are
static: grimp reads every import statement, function-local ones included. The run-time
check below adds what a static graph cannot see (an import made by a library at run
time). This module imports neither torch nor the service, so it checks from outside.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.no_torch import run_without_torch

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("app", "queryrec", "export", "service", "clients", "loadtest")


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the project at `project` (its pyproject.toml, its packages)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(project / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=project,
        env={"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_import_contracts_are_kept() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("service/inference/scoring.py", "import torch", "The service imports no torch"),
        (
            "service/inference/features.py",
            "from queryrec.training import batches",
            "The service imports",
        ),
        ("queryrec/features/model_inputs.py", "import service.state.redis_state", "Rooms"),
        ("export/bundle.py", "import service.inference.bundle", "Rooms"),
        ("queryrec/diffusion/sampler.py", "import queryrec.diffusion.train", "No import cycles"),
        ("queryrec/training/loop.py", "import app.bench", "Rooms"),
        ("clients/replay.py", "import loadtest.report", "Rooms"),
        ("queryrec/models/din.py", "import queryrec.training.config", "Rooms"),
        ("service/state/keys.py", "import service.inference.features", "Service rooms"),
        ("service/inference/scoring.py", "import service.transport.calls", "Service rooms"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    """The contracts are not vacuous: one forbidden import in a copy of the project
    makes `lint-imports` fail and name the contract."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # deliberately forbidden\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout[-3000:]
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, done.stdout[-3000:]


def import_circles(packages: tuple[str, ...] = PACKAGES) -> list[tuple[str, str]]:
    """Every pair (a, b) of the project's modules where a imports b directly and b leads
    back to a: the edges of import circles between files. grimp reads every import
    statement, function-local and TYPE_CHECKING ones included."""
    import grimp

    graph = grimp.build_graph(*packages, cache_dir=None)
    return sorted(
        (module, imported)
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if imported != module and graph.chain_exists(importer=imported, imported=module)
    )


def test_no_import_circles_between_files() -> None:
    assert import_circles() == []


def test_a_circle_between_two_files_is_found(tmp_path: Path) -> None:
    """The circle check is not vacuous: two modules importing each other (one of them
    inside a function) are reported."""
    package = tmp_path / "circled"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circled import b\n")
    (package / "b.py").write_text("def late() -> None:\n    from circled import a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert import_circles(("circled",)) == [
            ("circled.a", "circled.b"),
            ("circled.b", "circled.a"),
        ]
    finally:
        sys.path.remove(str(tmp_path))


def test_the_serving_process_imports_no_torch_at_run_time() -> None:
    done = run_without_torch(
        """
        import sys
        import service, service.inference.bundle, service.errors, service.inference.features, service.inference.scoring
        import service.transport.server, service.state.load, service.transport.run, clients.replay
        import queryrec.evaluation.bundle_scoring, queryrec.features.model_inputs
        assert "torch" not in sys.modules, "the serving side pulled in torch"
        """
    )
    assert done.returncode == 0, done.stderr
