"""Each item's search queries: the instrumental variables of IV4REC+ (numpy + polars).

IV4REC+ (`queryrec.models.baselines.iv4rec`) decomposes an item's embedding with the queries that
led users to click it. This module builds that table once per dataset, from the
**training split only** (search sessions with ts < `valid_start_ms`): for every item, the
normalised queries (`queryrec.features.query_identity`) of the training sessions in which
it was clicked, ranked by how many such clicks each query has (ties: the smaller query
id), the first M kept; each query is stored as the first T words of the earliest of those
sessions (a normalised query's sessions may order its words differently).
An item never clicked in a training search has an all-padding row. The table is a model
buffer (item index -> (M, T) words), so an exported model carries it and serving computes
nothing new.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from queryrec.features.dataset import PreparedDataset
from queryrec.features.query_identity import normalised_query_ids


def item_query_table(dataset: PreparedDataset, queries: int, tokens: int) -> np.ndarray:
    """(n_items, M, T) int64 word indices of each item's top-M training queries, 0 = none."""
    n_items = int(dataset.schema["vocab_sizes"]["items"])
    table = np.zeros((n_items, queries, tokens), dtype=np.int64)
    train_end = int(dataset.schema["split"]["valid_start_ms"])
    query_id = normalised_query_ids(dataset.query_offsets, dataset.query_words)
    session = np.repeat(
        np.arange(len(dataset.clicked_offsets) - 1, dtype=np.int64),
        np.diff(dataset.clicked_offsets),
    )
    in_train = dataset.search_ts[session] < train_end
    clicks = pl.DataFrame(
        {
            "item": dataset.clicked_items[in_train].astype(np.int64),
            "query": query_id[session[in_train]],
            "session": session[in_train],
        }
    )
    if clicks.is_empty():
        return table
    ranked = (
        clicks.group_by(["item", "query"])
        .agg(pl.len().alias("clicks"), pl.col("session").min())
        .sort(["item", "clicks", "query"], descending=[False, True, False])
        .with_columns(pl.int_range(pl.len()).over("item").alias("rank"))
        .filter(pl.col("rank") < queries)
    )
    item = ranked["item"].to_numpy()
    rank = ranked["rank"].to_numpy()
    first = dataset.query_offsets[ranked["session"].to_numpy()]
    size = np.minimum(dataset.query_offsets[ranked["session"].to_numpy() + 1] - first, tokens)
    for t in range(tokens):  # T is small (8): one vectorised pass per word position
        has = size > t
        table[item[has], rank[has], t] = dataset.query_words[first[has] + t]
    return table
