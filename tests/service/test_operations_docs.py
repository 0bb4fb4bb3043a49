"""docs/serving.md documents the service as the code has it: settings, reasons, metrics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.inference.degraded import reasons_table
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings, settings_table

SERVING_DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def generated_block(name: str) -> str:
    text = SERVING_DOC.read_text()
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", text, re.DOTALL)
    assert match, f"docs/serving.md has no {name} block"
    return match.group(1)


@pytest.mark.parametrize(
    ("block", "table"), [("settings", settings_table), ("degraded", reasons_table)]
)
def test_generated_tables_are_current(block: str, table: object) -> None:
    assert callable(table)
    assert generated_block(block) == table(), (
        f"docs/serving.md's {block} table is stale: run .venv/bin/python scripts/docs_tables.py"
    )


def test_every_setting_is_documented_with_a_description() -> None:
    for name, info in ServiceSettings.model_fields.items():
        assert info.description, name


def test_every_metric_is_in_the_serving_doc() -> None:
    text = SERVING_DOC.read_text()
    names = {family.name for family in ServiceMetrics().registry.collect()}
    assert names and sorted(name for name in names if f"`{name}" not in text) == []
