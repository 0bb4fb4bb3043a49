"""x0 per query: sessions pooled by normalised query and period, built by hand on a constructed log."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest

from app.cli import main
from queryrec.diffusion.query_units import QueryUnits, aggregate_queries, period_codes
from queryrec.diffusion.x0 import CLICKED, UNSEEN, ItemUniverse, build_x0, sessions_in
from queryrec.features.dataset import PreparedDataset
from queryrec.features.pseudo_positives import load_pseudo_positives
from queryrec.features.query_identity import normalised_query_ids

# s0..s4: (words, ts, shown in display order, clicked). Cuts: valid from 100, test from 200.
LOG = [
    ([3, 4], 10, [10, 11, 12], [11]),  # user A
    ([4, 3, 4], 20, [12, 10], []),  # user B, same query in another order: pooled with s0
    ([5], 30, [13, 14], []),  # user A
    ([5, 0], 40, [14, 15], []),  # user C, same query (padding dropped), no click either
    ([3, 4], 150, [10], [10]),  # user B, validation period: a unit of its own
]


def _csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    return offsets, np.array([v for x in lists for v in x], dtype=np.int64)


def _units() -> dict[str, np.ndarray]:
    word_offsets, words = _csr([w for w, *_ in LOG])
    shown_offsets, shown = _csr([s for *_, s, _ in LOG])
    clicked_offsets, clicked = _csr([c for *_, c in LOG])
    ts = np.array([t for _, t, *_ in LOG])
    return aggregate_queries(
        normalised_query_ids(word_offsets, words),
        period_codes(ts, 100, 200),
        ts,
        shown_offsets,
        shown,
        clicked_offsets,
        clicked,
    )


def test_sessions_of_one_query_and_period_are_pooled() -> None:
    units = _units()
    assert units["unit_of"].tolist() == [
        0,
        0,
        2,
        2,
        1,
    ]  # ({3,4}, train), ({3,4}, valid), ({5}, train)
    offsets, sessions = units["session_offsets"], units["sessions"]
    assert [sessions[offsets[u] : offsets[u + 1]].tolist() for u in range(3)] == [
        [0, 1],
        [4],
        [2, 3],
    ]
    assert units["search_ts"].tolist() == [10, 150, 30]

    def row(name: str, u: int) -> list[int]:
        o = units[f"{name}_offsets"]
        return units[f"{name}_items"][o[u] : o[u + 1]].tolist()

    # Every shown item once, at its best position over the sessions: 10 first in s0, 12
    # first in s1, 11 second in s0.
    assert row("shown", 0) == [10, 12, 11]
    assert units["shown_positions"][: units["shown_offsets"][1]].tolist() == [0, 0, 1]
    assert row("clicked", 0) == [11] and row("clicked", 1) == [10] and row("clicked", 2) == []
    assert row("shown", 2) == [13, 14, 15]  # 14 first in s3


def test_per_query_x0_is_clicked_once_anywhere_and_graded_by_best_position() -> None:
    units = _units()
    view = cast(PreparedDataset, SimpleNamespace(**units))
    universe = ItemUniverse.from_items(np.array([10, 11, 12, 13, 14, 15, 16]), 20)
    x0 = build_x0(view, universe, np.array([0, 2]), hide_clicks=False, position_weight=0.5)
    top, second = -0.5, -1 + 0.5 / math.log2(3)
    assert x0[0].tolist() == pytest.approx([top, CLICKED, top, UNSEEN, UNSEEN, UNSEEN, UNSEEN])
    # The click-less query: every shown item negative, nothing positive, 16 never shown.
    assert x0[1].tolist() == pytest.approx([UNSEEN, UNSEEN, UNSEEN, top, top, second, UNSEEN])
    hidden = build_x0(view, universe, np.array([0]), hide_clicks=True, position_weight=0.5)
    assert hidden[0, 1] == pytest.approx(second)  # the click hidden: its shown value


def test_the_view_over_a_prepared_dataset(tiny_data: Path) -> None:
    """A training unit is click-less iff I+_q is empty across every training session of
    the query; each session belongs to exactly one unit."""
    base = PreparedDataset(tiny_data)
    view = QueryUnits(base)
    valid_start = int(base.schema["split"]["valid_start_ms"])
    clickless = sessions_in(view, 0, valid_start, clicked=False)
    rows, source = view.sessions_of(clickless)
    assert len(rows) == len(set(rows.tolist())) and (base.search_ts[rows] < valid_start).all()
    assert (np.diff(base.clicked_offsets)[rows] == 0).all()
    query = normalised_query_ids(base.query_offsets, base.query_words)
    in_train = base.search_ts < valid_start
    has_click = np.diff(base.clicked_offsets) > 0
    clicked_queries = set(query[in_train & has_click].tolist())
    expected = np.flatnonzero(in_train & ~np.isin(query, list(clicked_queries)))
    assert sorted(rows.tolist()) == expected.tolist()
    assert source.max() == len(clickless) - 1
    assert sorted(view.sessions.tolist()) == list(range(len(base.search_ts)))
    assert view.feed_user is base.feed_user  # the rest is the base's


def test_per_query_augment_gives_every_session_of_a_clickless_query_its_positives(
    tiny_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    model = tmp_path / "diffusion"
    common = ["--data", str(data)]
    args = ["diffusion", "train", *common, "--out", str(model), "--epochs", "1", "--unit", "query"]
    assert main([*args, "--no-references"]) == 0
    assert main(["diffusion", "augment", *common, "--model", str(model)]) == 0
    dataset = PreparedDataset(data)
    manifest = json.loads((data / "augment/manifest.json").read_text())
    assert manifest["unit"] == "query" and manifest["queries"] < manifest["sessions"]
    pseudo = load_pseudo_positives(dataset)
    assert pseudo is not None
    view = QueryUnits(dataset)
    valid_start = int(dataset.schema["split"]["valid_start_ms"])
    clickless = sessions_in(view, 0, valid_start, clicked=False)
    rows, source = view.sessions_of(clickless)
    lists = [tuple(pseudo.items[pseudo.offsets[r] : pseudo.offsets[r + 1]].tolist()) for r in rows]
    assert all(len(x) == 4 for x in lists)
    for unit in np.unique(source)[:50]:  # one list per query, the same for all its sessions
        assert len({lists[i] for i in np.flatnonzero(source == unit)}) == 1
    assert manifest["sessions"] == len(rows)
    assert main([*args[:-2], "--unit", "user"]) == 2
