"""Run Python code in a fresh interpreter where `import torch` fails (tests' helper).

A meta-path finder answers every `torch` import with ModuleNotFoundError, as on a
serving image without torch. (Putting None into sys.modules instead would break
libraries that probe sys.modules["torch"], such as scipy.)
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKER = """
import importlib.abc, importlib.machinery, sys

class _NoTorchLoader(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked by the test)")

    def exec_module(self, module):
        pass

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            return importlib.machinery.ModuleSpec(name, _NoTorchLoader())
        return None

sys.meta_path.insert(0, _NoTorch())
"""


def run_without_torch(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `code` after the blocker; return the finished process (check returncode)."""
    script = BLOCKER + "\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=600
    )
