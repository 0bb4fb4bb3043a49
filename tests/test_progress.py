"""Progress bars: redrawn in a terminal, one line per bar in a log."""

from __future__ import annotations

import io

from queryrec.progress import bar


def test_a_bar_in_a_log_writes_one_line_when_it_ends() -> None:
    log = io.StringIO()  # not a terminal
    progress = bar(range(10_000), file=log, desc="epoch 1")
    for _ in progress:
        progress.set_postfix(loss=0.5)
    assert log.getvalue().count("\n") == 1
    assert "\r" not in log.getvalue()
    assert "epoch 1" in log.getvalue()
    assert "10000/10000" in log.getvalue()
    assert "loss=0.5" in log.getvalue()


def test_a_manual_bar_in_a_log_is_silent_until_closed() -> None:
    log = io.StringIO()
    progress = bar(total=3, file=log, desc="state load")
    progress.update(2)
    assert log.getvalue() == ""
    progress.update(1)
    progress.close()
    assert log.getvalue().count("\n") == 1
    assert "3/3" in log.getvalue()


def test_a_disabled_bar_writes_nothing() -> None:
    log = io.StringIO()
    for _ in bar(range(100), file=log, enabled=False):
        pass
    assert log.getvalue() == ""
