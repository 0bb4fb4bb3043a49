"""The replay's parity failure names the likelier cause in one line."""

from __future__ import annotations

from pathlib import Path

from clients.replay import Parity


def parity(off: int, compared: int = 1000) -> Parity:
    return Parity(
        compared=compared, max_abs_diff=0.2, p999_abs_diff=0.1, above_tolerance=off, offline_auc=0.7
    )


def test_no_failure_when_every_score_matches() -> None:
    assert parity(0).failure(Path("d")) is None


def test_most_scores_off_points_at_the_missing_state() -> None:
    message = parity(900).failure(Path("demo-work/data"))
    assert message is not None and "\n" not in message
    assert "does not hold this dataset's state" in message
    assert "queryrec state load --data demo-work/data" in message


def test_a_few_scores_off_points_at_the_features() -> None:
    message = parity(3).failure(Path("d"))
    assert message is not None and "serving does not compute training's features" in message
    assert message.startswith("3 of 1,000 served scores differ")
