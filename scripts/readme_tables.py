"""Rewrite the generated tables of README.md's Operations section from the code.

Run after changing `service/settings.py` or `service/inference/degraded.py`:
    .venv/bin/python scripts/readme_tables.py
"""

from __future__ import annotations

from pathlib import Path

from service.inference.degraded import reasons_table
from service.settings import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> None:
    text = README.read_text()
    for name, table in (("settings", settings_table()), ("degraded", reasons_table())):
        start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
        head, found, rest = text.partition(start)
        if not found or end not in rest:
            raise SystemExit(f"README.md: no {name} block ({start.strip()} ... {end})")
        text = f"{head}{start}{table}\n{rest[rest.index(end) :]}"
    README.write_text(text)


if __name__ == "__main__":
    main()
