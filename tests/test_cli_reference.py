"""docs/cli.md is the CLI reference rendered from the Typer app, and stays so."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cli_reference", ROOT / "scripts/cli_reference.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("cli_reference", module)
    spec.loader.exec_module(module)
    return module


def test_cli_doc_is_the_generators_output() -> None:
    generator = load_generator()
    fresh = generator.render()
    current = (ROOT / "docs/cli.md").read_text() if (ROOT / "docs/cli.md").exists() else ""
    assert current == fresh, (
        "docs/cli.md differs from the CLI in app/cli.py: regenerate it with "
        "`.venv/bin/python scripts/cli_reference.py`"
    )


def test_the_reference_names_every_command_and_option() -> None:
    import typer.main

    from app.cli import app

    text = load_generator().render()
    root: Any = typer.main.get_command(app)
    context = root.context_class(root, info_name="queryrec")
    for name in root.list_commands(context):
        command = root.get_command(context, name)
        assert command is not None
        assert f"`queryrec {name}" in text, name
        for param in getattr(command, "params", []):
            if not getattr(param, "hidden", False) and param.name != "help":
                assert f"`{param.opts[0]}`" in text, (name, param.opts[0])


def test_rendering_is_deterministic() -> None:
    generator = load_generator()
    assert generator.render() == generator.render()
