"""The README's Operations section matches the code it documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.inference.degraded import reasons_table
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def generated_block(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", text, re.DOTALL)
    assert match, f"README.md has no {name} block"
    return match.group(1)


@pytest.mark.parametrize(
    ("block", "table"), [("settings", settings_table), ("degraded", reasons_table)]
)
def test_generated_tables_are_current(block: str, table: object) -> None:
    assert callable(table)
    assert generated_block(block) == table(), (
        f"README.md's {block} table is stale: run scripts/readme_tables.py"
    )


def test_every_setting_is_documented_with_a_description() -> None:
    for name, info in ServiceSettings.model_fields.items():
        assert info.description, name


def test_every_metric_is_in_the_readme() -> None:
    text = README.read_text()
    names = {family.name for family in ServiceMetrics().registry.collect()}
    assert names and sorted(name for name in names if f"`{name}" not in text) == []
