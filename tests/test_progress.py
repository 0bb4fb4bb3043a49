"""Progress bars: redrawn in a terminal, a few lines in a log."""

from __future__ import annotations

import io

from queryrec.progress import bar


def test_a_bar_in_a_log_writes_a_few_lines_not_one_per_update() -> None:
    log = io.StringIO()  # not a terminal
    for _ in bar(range(10_000), file=log, desc="work"):
        pass
    updates = [part for part in log.getvalue().replace("\r", "\n").splitlines() if part.strip()]
    assert 1 <= len(updates) <= 3, updates  # the first draw and the final one
    assert "10000/10000" in updates[-1]


def test_a_disabled_bar_writes_nothing() -> None:
    log = io.StringIO()
    for _ in bar(range(100), file=log, enabled=False):
        pass
    assert log.getvalue() == ""
