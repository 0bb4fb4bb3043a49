"""What one query is: the rule I+_q (training) and x0 per query (diffusion) group by (numpy + polars).

A query is the *set* of its word indices: the token list with padding (0) removed,
duplicates removed and sorted ascending. KuaiSAR's keyword is a list of hashed, already
segmented words; the same words in another order ("red dress", "dress red") or with a
word repeated ask for the same thing, and the order is not what the item catalogue
answers to, so both collapse to one query. No stop tokens are removed: the words are
hashes and the dataset names no stop list, so any list would be a guess. A search without
any word is not pooled with other word-less searches (they share no intent): each such
session is a query of its own.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from queryrec.features.schema import PADDING_INDEX


def normalised_query_ids(word_offsets: np.ndarray, words: np.ndarray) -> np.ndarray:
    """(n_sessions,) query id per session: equal ids iff equal sets of non-padding words;
    a session without words gets an id of its own."""
    n = len(word_offsets) - 1
    session = np.repeat(np.arange(n, dtype=np.int64), np.diff(word_offsets))
    keep = words != PADDING_INDEX
    tokens = (
        pl.DataFrame({"session": session[keep], "word": words[keep].astype(np.int64)})
        .unique()
        .sort(["session", "word"])
        .group_by("session", maintain_order=True)
        .agg("word")
    )
    by_query = tokens.group_by("word", maintain_order=True).agg("session").with_row_index("q")
    ids = np.full(n, -1, dtype=np.int64)
    flat = by_query.explode("session")
    ids[flat["session"].to_numpy()] = flat["q"].to_numpy().astype(np.int64)
    wordless = np.flatnonzero(ids < 0)
    ids[wordless] = by_query.height + np.arange(len(wordless))
    return ids
