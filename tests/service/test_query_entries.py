"""The query-history entries of Redis: one decode for a whole list, empty searches too."""

from __future__ import annotations

import numpy as np

from service import redis_keys as keys


def test_a_list_of_entries_decodes_in_one_pass() -> None:
    entries = [keys.pack_query(30, [7, 8]), keys.pack_query(20, []), keys.pack_query(10, [9])]
    assert entries[1] == np.array([20], dtype="<i8").tobytes()  # an empty search: ts only
    ts, sizes, words = keys.unpack_queries(entries)
    assert ts.tolist() == [30, 20, 10]
    assert sizes.tolist() == [2, 0, 1]
    assert words.tolist() == [7, 8, 9]
    for entry in entries:  # the same as decoding entry by entry
        one_ts, one_words = keys.unpack_query(entry)
        assert keys.unpack_queries([entry])[0].tolist() == [one_ts]
        assert keys.unpack_queries([entry])[2].tolist() == one_words.tolist()


def test_no_entries() -> None:
    ts, sizes, words = keys.unpack_queries([])
    assert len(ts) == len(sizes) == len(words) == 0
