"""Read the deployment files the way Docker and Compose do, for the tests of docker/.

Only what the tests need: Dockerfile instructions per build stage (continuation lines
joined, comments and parser directives dropped, exec-form arguments as lists), the
options of HEALTHCHECK, and compose files with Compose's `${VAR}`, `${VAR:-default}` and
`${VAR:?message}` interpolation from an env file. No Docker is needed.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if p.suffix != ".dockerignore")
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_REPLICAS = DOCKER / "compose.replicas.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
SETTINGS_PREFIX = "QUERYREC_"


@dataclass
class Instruction:
    """One Dockerfile instruction: keyword (upper case) and the rest of its line."""

    keyword: str
    value: str

    def exec_form(self) -> list[str]:
        """The JSON-array (exec form) arguments; AssertionError for the shell form."""
        parsed = json.loads(self.value)
        assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed), self.value
        return parsed


@dataclass
class Stage:
    """One `FROM ... [AS name]` stage and its instructions."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """The stage's ENV values (`KEY=value` pairs; `$PATH`-style references to earlier
        values are expanded, as the builder does)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.value):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {instruction.value!r}: use KEY=value pairs"
                values[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), ""), value)
        return values


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # ARG defaults before the first FROM
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def _logical_lines(text: str) -> list[str]:
    """Lines with `\\` continuations joined; comments and blank lines dropped (a comment
    line inside a continued instruction is skipped, as Docker does)."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        if current:
            lines.append(current)
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def read_dockerfile(path: Path) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            words = value.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            stages.append(Stage(base, name))
        elif not stages:
            if keyword == "ARG":
                key, _, default = value.partition("=")
                args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, value))
    assert stages, f"{path}: no FROM"
    return Dockerfile(path, args, stages)


def copy_sources(instruction: Instruction) -> list[str]:
    """Source paths of a COPY / ADD from the build context (none for `--from=`)."""
    words = shlex.split(instruction.value)
    if any(word.startswith("--from") for word in words):
        return []
    positional = [word for word in words if not word.startswith("--")]
    return positional[:-1]


@dataclass(frozen=True)
class Healthcheck:
    command: list[str]
    interval_s: float
    timeout_s: float
    start_period_s: float
    retries: int


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")


def duration_s(text: str) -> float:
    """A Docker / Compose duration (`30s`, `1m`, `500ms`; composite `1m30s` too)."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert re.fullmatch(r"((\d+(\.\d+)?)(ms|s|m|h))+", text), f"not a duration: {text!r}"
    return total


def healthcheck(stage: Stage) -> Healthcheck:
    """The stage's HEALTHCHECK, with Docker's defaults for options it does not set."""
    instruction = stage.last("HEALTHCHECK")
    assert instruction is not None, "no HEALTHCHECK"
    options = {"interval": "30s", "timeout": "30s", "start-period": "0s", "retries": "3"}
    rest = instruction.value
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        rest = rest.lstrip()
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK {instruction.value!r}: use CMD [...]"
    return Healthcheck(
        command=Instruction("CMD", command).exec_form(),
        interval_s=duration_s(options["interval"]),
        timeout_s=duration_s(options["timeout"]),
        start_period_s=duration_s(options["start-period"]),
        retries=int(options["retries"]),
    )


def container_command(stage: Stage) -> list[str]:
    """ENTRYPOINT + CMD of the stage (exec form), as Docker runs them."""
    entrypoint = stage.last("ENTRYPOINT")
    cmd = stage.last("CMD")
    return (entrypoint.exec_form() if entrypoint else []) + (cmd.exec_form() if cmd else [])


# ---------------------------------------------------------------------------- compose


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that knows Compose's merge tags `!reset` and `!override`."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)


_ComposeLoader.add_constructor("!reset", _tagged)
_ComposeLoader.add_constructor("!override", _tagged)


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines of a Compose env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=value: {line!r}"
        values[key.strip()] = value.strip()
    return values


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def variables(text: str) -> set[str]:
    """Names of the `${VAR...}` / `$VAR` references Compose interpolates in `text`."""
    return {m.group(1) or m.group(4) for m in _VARIABLE.finditer(text) if m.group(0) != "$$"}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose interpolation over a parsed compose document."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        given = env.get(name)
        if operator in (":-", "-"):
            empty = given is None or (operator == ":-" and given == "")
            return argument if empty else str(given)
        if operator in (":?", "?"):
            assert given is not None and (operator == "?" or given != ""), (
                f"${{{name}}} is required: {argument}"
            )
        return given or ""

    return _VARIABLE.sub(replace, value)


def read_compose(path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file parsed; interpolated from `env` unless it is None."""
    document = yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass
    assert isinstance(document, dict), path
    return document if env is None else interpolate(document, env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment` (mapping or `KEY=value` list) as a dict."""
    given = service.get("environment") or {}
    if isinstance(given, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in given)
    return {str(key): "" if value is None else str(value) for key, value in given.items()}
