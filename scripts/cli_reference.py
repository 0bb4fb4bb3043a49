"""Render the `queryrec` CLI reference (docs/cli.md) from the Typer app `app.cli`.

Every command and subcommand, in the order `queryrec --help` lists them, with its help
text and a table of its options (type, default, help). The output depends only on the
code, so the same code always gives the same bytes; `tests/test_cli_reference.py` fails
when docs/cli.md differs from it.

    .venv/bin/python scripts/cli_reference.py           # rewrite docs/cli.md
    .venv/bin/python scripts/cli_reference.py --check   # exit 1 when docs/cli.md is stale
"""

from __future__ import annotations

import enum
import inspect
import sys
import typing
from pathlib import Path, PurePath
from typing import Any

import typer.main

ROOT = Path(__file__).resolve().parents[1]
CLI_DOC = ROOT / "docs" / "cli.md"
REGENERATE = ".venv/bin/python scripts/cli_reference.py"


def _cell(text: str) -> str:
    """One Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


# Typer carries its own copy of Click, so commands and parameters are read by their
# attributes (Click's public API), not by isinstance checks against `click`.


def _is_option(param: Any) -> bool:
    return bool(param.param_type_name == "option")


def _annotation_name(annotation: Any) -> str:
    """A short name for an option's Python type: `int`, `path`, `a | b` for a Literal."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(str(arg) for arg in args)
    if args and origin is not None:  # Optional[X], X | None
        return _annotation_name(args[0])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(str(member.value) for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _type_name(param: Any) -> str:
    if _is_option(param) and param.is_flag:
        return "flag"
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        return _annotation_name(descriptor.annotation)
    kind = param.type  # a plain Click parameter
    if getattr(kind, "choices", None):
        return " \\| ".join(str(choice) for choice in kind.choices)
    return str(kind.name).lower()


def _default(param: Any) -> str:
    if param.required:
        return "required"
    default = param.default
    if default is None or callable(default):
        return "–"
    if _is_option(param) and param.is_flag:
        return "on" if default else "off"
    if isinstance(default, (list, tuple)):
        return f"`{','.join(str(value) for value in default)}`" if default else "–"
    return f"`{default}`"


def _options(command: Any) -> list[str]:
    rows = []
    for param in command.params:
        if getattr(param, "hidden", False) or param.name == "help":
            continue
        if _is_option(param):
            names = ", ".join(f"`{name}`" for name in param.opts + param.secondary_opts)
            help_text = param.help or ""
        else:
            names = f"`{(param.name or '').upper()}` (argument)"
            help_text = getattr(param, "help", None) or ""
        shown_help = _cell(help_text) or "–"
        rows.append(f"| {names} | {_type_name(param)} | {_default(param)} | {shown_help} |")
    return rows


def _usage(path: list[str], command: Any) -> str:
    parts = ["queryrec", *path]
    for param in command.params:
        if getattr(param, "hidden", False) or not _is_option(param):
            continue
        if param.name == "help":
            continue
        flag = param.opts[0]
        shown = flag if param.is_flag else f"{flag} {(param.name or '').upper()}"
        parts.append(shown if param.required else f"[{shown}]")
    return " ".join(parts)


def _render(path: list[str], command: Any, context: Any, out: list[str]) -> None:
    if hasattr(command, "list_commands"):
        if path:
            out += [f"## `queryrec {' '.join(path)}`", "", inspect.cleandoc(command.help or ""), ""]
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is None or sub.hidden:
                continue
            sub_context = sub.context_class(sub, parent=context, info_name=name)
            _render([*path, name], sub, sub_context, out)
        return
    level = "###" if len(path) > 1 else "##"
    out += [f"{level} `queryrec {' '.join(path)}`", ""]
    if command.help:
        out += [_cell(inspect.cleandoc(command.help)), ""]
    out += ["```", _usage(path, command), "```", ""]
    rows = _options(command)
    if rows:
        out += ["| option | type | default | help |", "|---|---|---|---|", *rows, ""]


def render() -> str:
    """The whole of docs/cli.md, as Markdown."""
    from app.cli import app

    root = typer.main.get_command(app)
    context = root.context_class(root, info_name="queryrec")
    out = [
        "# CLI reference",
        "",
        "<!-- Generated from app/cli.py by scripts/cli_reference.py; do not edit by hand. -->",
        "",
        _cell(inspect.cleandoc(root.help or "")),
        "",
        "Every command exits 2 with one line on stderr on bad input. Regenerate this page "
        f"after changing a command: `{REGENERATE}`.",
        "",
    ]
    _render([], root, context, out)
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not CLI_DOC.exists() or CLI_DOC.read_text() != text:
            print(f"docs/cli.md is stale: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    CLI_DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
