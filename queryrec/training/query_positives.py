"""I+_q as the paper defines it: the items clicked after any user searched q (numpy + polars).

PAPER.md ("The losses"): `I+_q` = items clicked after at least one user searched q. This
module builds it once, from the training split only, and stores it per search session
(a CSR over the rows of `timelines/search.parquet`, like `PseudoPositives`), so that
`BatchBuilder` looks it up by the sample's last session before t exactly as it looks up
the per-session clicks (`AuxiliaryConfig.cl_positive_source = "query"`).

**What a query is** (choice): the set of its word indices
(`queryrec.features.query_identity`, which says why; the diffusion job's per-query x0
groups by the same rule). A word-less search is a query of its own, so its I+ is its own
training clicks.

**What I+_q holds**: every click (one per clicked row of `clicked`) in a training session
(ts < `valid_start_ms`) whose normalised query is q, by any user; validation and test
clicks never enter. Items are ranked by click count, ties by the smaller item index, and
the first K are kept.

**No leakage from the sample's own future**: for a sample of user u at time t whose last
search before t is session s (query q), the table row of s is I+_q computed **without u's
training sessions of q that come after s** in u's timeline. The timeline is ordered by
(user, ts, session id) and s is the last session with ts < t, so "after s" is exactly
"at or after t": no click of u at or after t can be a positive of that sample, while
other users' training clicks of q (at any training time) and u's own clicks of q before t
(s included) count, as the pooled definition asks. Because the exclusion is built into
the row of s, any lookup by the last session before t obeys it; nothing at batch time can
forget it. (A session's clicks carry the session's timestamp, the only time KuaiSAR
gives them.)

Construction is vectorised. The counts adjusted for a session differ from the pooled
counts of q only on items u clicked in later sessions of q; with e such later clicks, the
top K after adjustment lie within the pooled top K + e (every other item keeps its count,
and at least K unchanged items stay above anything ranked lower), so each session reads
at most K + e candidates of q's pooled list, and the own later clicks are subtracted by a
join. A session without later own clicks of its query reads the pooled top K unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from queryrec.features.dataset import PreparedDataset
from queryrec.features.query_identity import normalised_query_ids


@dataclass(frozen=True)
class QueryPositives:
    """I+ of each search session's query, cut to K and corrected for the own user's later
    sessions (CSR over search.parquet rows, best first)."""

    offsets: np.ndarray  # (n_sessions + 1,) int64
    items: np.ndarray  # (offsets[-1],) item indices
    counts: np.ndarray  # (offsets[-1],) click counts behind each item (after the correction)
    query: np.ndarray  # (n_sessions,) int64 normalised-query id of each session


def build_query_positives(
    user: np.ndarray,
    ts: np.ndarray,
    word_offsets: np.ndarray,
    words: np.ndarray,
    clicked_offsets: np.ndarray,
    clicked_items: np.ndarray,
    *,
    train_end: int,
    k: int,
) -> QueryPositives:
    """I+ per session from search-session arrays ordered by (user, ts): clicks of sessions
    with ts < `train_end` only, top `k` by click count (ties: smaller item first)."""
    n = len(user)
    if k < 1:
        raise ValueError(f"k must be positive, not {k}")
    user = np.asarray(user, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    if n > 1 and not np.all(
        (user[1:] > user[:-1]) | ((user[1:] == user[:-1]) & (ts[1:] >= ts[:-1]))
    ):
        raise ValueError("search sessions must be ordered by (user, ts)")
    query = normalised_query_ids(word_offsets, words)
    # (user, query) pair of every session, dense.
    _, pair = np.unique(user * (int(query.max(initial=0)) + 1) + query, return_inverse=True)
    pair = pair.astype(np.int64).reshape(-1)

    # Training click events: one per clicked row of a session before the cut.
    ev_session = np.repeat(np.arange(n, dtype=np.int64), np.diff(clicked_offsets))
    ev_item = np.asarray(clicked_items, dtype=np.int64)
    train = ts[ev_session] < train_end
    ev_session, ev_item = ev_session[train], ev_item[train]
    ev_query, ev_pair = query[ev_session], pair[ev_session]

    # Pooled counts per query, best first: (query, -count, item).
    pooled = (
        pl.DataFrame({"q": ev_query, "item": ev_item})
        .group_by(["q", "item"])
        .len("count")
        .sort(["q", "count", "item"], descending=[False, True, False])
    )
    pooled_query = pooled["q"].to_numpy()
    pooled_item = pooled["item"].to_numpy().astype(np.int64)
    pooled_count = pooled["count"].to_numpy().astype(np.int64)
    n_queries = int(query.max(initial=-1)) + 1
    query_start = np.searchsorted(pooled_query, np.arange(n_queries + 1))

    # e_s: the own user's training clicks of the same query in sessions after s.
    width = n + 1
    ev_key = np.sort(ev_pair * width + ev_session)
    session_key = pair * width + np.arange(n)
    later = np.searchsorted(ev_key, pair * width + n, side="right") - np.searchsorted(
        ev_key, session_key, side="right"
    )
    available = query_start[query + 1] - query_start[query]
    n_cand = np.minimum(available, k + later)

    # Candidates: the first n_cand[s] items of the pooled list of s's query.
    cand_session = np.repeat(np.arange(n, dtype=np.int64), n_cand)
    cand_start = np.concatenate([[0], np.cumsum(n_cand)])
    rank = np.arange(len(cand_session), dtype=np.int64) - cand_start[cand_session]
    source = query_start[query[cand_session]] + rank
    cand_item = pooled_item[source]
    cand_count = pooled_count[source].copy()

    # Subtract the own later clicks, for sessions that have any.
    affected = np.flatnonzero(later[cand_session] > 0)
    if len(affected):
        own = (
            pl.DataFrame(
                {
                    "cand": affected,
                    "pair": pair[cand_session[affected]],
                    "item": cand_item[affected],
                    "session": cand_session[affected],
                }
            )
            .join(
                pl.DataFrame({"pair": ev_pair, "item": ev_item, "ev_session": ev_session}),
                on=["pair", "item"],
                how="inner",
            )
            .filter(pl.col("ev_session") > pl.col("session"))
            .group_by("cand")
            .len("own")
        )
        np.subtract.at(cand_count, own["cand"].to_numpy(), own["own"].to_numpy().astype(np.int64))

    kept = cand_count > 0
    cand_session, cand_item, cand_count = cand_session[kept], cand_item[kept], cand_count[kept]
    order = np.lexsort((cand_item, -cand_count, cand_session))
    cand_session, cand_item, cand_count = (
        cand_session[order],
        cand_item[order],
        cand_count[order],
    )
    starts = np.searchsorted(cand_session, np.arange(n + 1))
    top = (np.arange(len(cand_session)) - starts[cand_session]) < k
    sizes = np.bincount(cand_session[top], minlength=n)
    return QueryPositives(
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        items=cand_item[top],
        counts=cand_count[top],
        query=query,
    )


def query_positives(dataset: PreparedDataset, k: int) -> QueryPositives:
    """`build_query_positives` over a prepared dataset's search timeline and split."""
    return build_query_positives(
        dataset.search_user,
        dataset.search_ts,
        dataset.query_offsets,
        dataset.query_words,
        dataset.clicked_offsets,
        dataset.clicked_items,
        train_end=int(dataset.schema["split"]["valid_start_ms"]),
        k=k,
    )
