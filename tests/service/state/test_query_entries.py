"""The query-history entries of Redis: one decode for a whole list, empty searches too,
and the search clicks a query entry carries after its words (service/state/keys.py)."""

from __future__ import annotations

import numpy as np
import pytest

from service.state import keys


def le(*values: int) -> bytes:
    """Little-endian int64 bytes of `values`, one after the other."""
    return b"".join(value.to_bytes(8, "little", signed=True) for value in values)


def test_a_list_of_entries_decodes_in_one_pass() -> None:
    entries = [keys.pack_query(30, [7, 8]), keys.pack_query(20, []), keys.pack_query(10, [9])]
    assert entries[1] == np.array([20], dtype="<i8").tobytes()  # an empty search: ts only
    ts, sizes, words, click_sizes, clicked = keys.unpack_queries(entries)
    assert ts.tolist() == [30, 20, 10]
    assert sizes.tolist() == [2, 0, 1]
    assert words.tolist() == [7, 8, 9]
    assert click_sizes.tolist() == [0, 0, 0] and clicked.tolist() == []
    for entry in entries:  # the same as decoding entry by entry
        one_ts, one_words, one_clicked = keys.unpack_query(entry)
        assert keys.unpack_queries([entry])[0].tolist() == [one_ts]
        assert keys.unpack_queries([entry])[2].tolist() == one_words.tolist()
        assert one_clicked.tolist() == []


def test_no_entries() -> None:
    decoded = keys.unpack_queries([])
    assert len(decoded) == 5 and all(len(part) == 0 for part in decoded)
    assert all(part.dtype == np.int64 for part in decoded)


def test_search_clicks_pack_after_a_separator_to_exact_bytes() -> None:
    assert keys.SEARCH_CLICKS_MARK == -1
    assert keys.pack_query(1, [2, 3], [9, 8]) == le(1, 2, 3, -1, 9, 8)
    assert keys.pack_query(1, [], [5]) == le(1, -1, 5)  # a search without words, clicked
    assert le(-1) == b"\xff" * 8
    # Without clicks: the bytes of the layout before search clicks, no separator.
    assert keys.pack_query(1, [2, 3]) == le(1, 2, 3)
    assert keys.pack_query(1, [2, 3], []) == le(1, 2, 3)
    assert keys.pack_query(1 << 40, np.array([1 << 50]), np.array([1 << 62])) == le(
        1 << 40, 1 << 50, -1, 1 << 62
    )


@pytest.mark.parametrize(("tokens", "clicked"), [([1, -1], []), ([1], [2, -5]), ([-1], [3])])
def test_negative_ids_are_refused_when_packing(tokens: list[int], clicked: list[int]) -> None:
    """A negative id would read as the separator."""
    with pytest.raises(ValueError, match="negative"):
        keys.pack_query(1, tokens, clicked)


def test_entries_with_and_without_clicks_decode_together() -> None:
    entries = [
        keys.pack_query(50, [7, 8], [70, 71]),
        keys.pack_query(40, []),
        le(30, 9),  # written before search clicks existed: no separator, no clicks
        keys.pack_query(20, [], [5]),
        keys.pack_query(10, [1, 2, 3], [6, 4, 2]),
        keys.pack_query(5, [4]),
    ]
    ts, sizes, words, click_sizes, clicked = keys.unpack_queries(entries)
    assert ts.tolist() == [50, 40, 30, 20, 10, 5]
    assert sizes.tolist() == [2, 0, 1, 0, 3, 1]
    assert words.tolist() == [7, 8, 9, 1, 2, 3, 4]
    assert click_sizes.tolist() == [2, 0, 0, 1, 3, 0]
    assert clicked.tolist() == [70, 71, 5, 6, 4, 2]  # each search's in recording order
    assert keys.unpack_query(entries[0])[2].tolist() == [70, 71]
    assert keys.unpack_query(entries[0])[1].tolist() == [7, 8]
    _, no_words, one_click = keys.unpack_query(entries[3])
    assert no_words.tolist() == [] and one_click.tolist() == [5]
    _, old_words, no_clicks = keys.unpack_query(entries[2])
    assert old_words.tolist() == [9] and no_clicks.tolist() == []


def test_the_one_pass_decode_equals_decoding_entry_by_entry() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        entries = []
        for _ in range(int(rng.integers(1, 12))):
            tokens = rng.integers(0, 1 << 62, int(rng.integers(0, 5)))
            clicked = rng.integers(0, 1 << 62, int(rng.integers(0, 4)) * int(rng.random() < 0.5))
            entries.append(keys.pack_query(int(rng.integers(0, 1 << 45)), tokens, clicked))
        one_by_one = [keys.unpack_query(entry) for entry in entries]
        ts, sizes, words, click_sizes, clicked_all = keys.unpack_queries(entries)
        assert ts.tolist() == [t for t, _, _ in one_by_one]
        assert sizes.tolist() == [len(w) for _, w, _ in one_by_one]
        assert words.tolist() == [int(x) for _, w, _ in one_by_one for x in w]
        assert click_sizes.tolist() == [len(c) for _, _, c in one_by_one]
        assert clicked_all.tolist() == [int(x) for _, _, c in one_by_one for x in c]


def test_search_clicks_script_arguments_are_raw_bytes() -> None:
    args = keys.search_clicks_args(1_700_000_000_000, [5, 1 << 40], cap=16, ttl_s=100)
    assert args == [le(1_700_000_000_000), 16, 100, le(5), le(1 << 40)]
    # The script compares the timestamp with an entry's first 8 bytes.
    assert keys.pack_query(1_700_000_000_000, [3])[:8] == args[0]
