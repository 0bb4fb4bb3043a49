"""Rewrite the generated tables of docs/serving.md (settings, degraded reasons) from the code.

Run after changing `service/settings.py` or `service/inference/degraded.py`:
    .venv/bin/python scripts/docs_tables.py
`tests/service/test_operations_docs.py` fails while a table is stale.
"""

from __future__ import annotations

from pathlib import Path

from service.inference.degraded import reasons_table
from service.settings import settings_table

SERVING_DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"


def main() -> None:
    text = SERVING_DOC.read_text()
    for name, table in (("settings", settings_table()), ("degraded", reasons_table())):
        start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
        head, found, rest = text.partition(start)
        if not found or end not in rest:
            raise SystemExit(f"docs/serving.md: no {name} block ({start.strip()} ... {end})")
        text = f"{head}{start}{table}\n{rest[rest.index(end) :]}"
    SERVING_DOC.write_text(text)


if __name__ == "__main__":
    main()
