"""`_in_ranges`, the membership test behind L_next's "no r- among the user's own r+
items": against a brute-force set lookup over random ranges."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from queryrec.training.batches import _in_ranges


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(0, 40), min_size=0, max_size=60),
    spans=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_membership_matches_a_set_lookup(
    values: list[int], spans: list[tuple[int, int]], seed: int
) -> None:
    array = np.asarray(values, dtype=np.int64)
    lo = np.asarray([min(start, len(values)) for start, _ in spans], dtype=np.int64)
    hi = np.minimum(lo + np.asarray([size for _, size in spans]), len(values))
    rows = np.random.default_rng(seed).permutation(len(spans))  # rows in any order
    candidates = np.random.default_rng(seed).integers(0, 45, size=(len(rows), 6))
    got = _in_ranges(array, (lo, hi), rows, candidates)
    for i, row in enumerate(rows):
        members = set(values[lo[row] : hi[row]])
        assert got[i].tolist() == [int(c) in members for c in candidates[i]]
