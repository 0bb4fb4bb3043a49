"""The diffusion job's pseudo-positives, as training and export read them (torch-free).

`queryrec diffusion augment` writes them into the dataset folder, beside what
`data prepare` wrote and outside its hashed files (`augment/`):

| file | what |
|---|---|
| `pseudo_positives.parquet` | `session` (row of timelines/search.parquet), `items` (K item indices, best first) |
| `query_positives.parquet` | the same by query, for serving (`queryrec.features.query_positives`): `key`, `items` |
| `manifest.json` | the dataset's schema hash, `source`, the diffusion model folder and its settings, K, counts |

This module is the artifact's one reader: training's L_cl reads the per-session table,
the query slots and the bundle read the table by query. A manifest made for another
dataset is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import polars as pl

from queryrec.errors import QueryRecError
from queryrec.features.dataset import PreparedDataset
from queryrec.features.query_positives import QueryPositives

AUGMENT_DIR, POSITIVES_FILE, MANIFEST_FILE = "augment", "pseudo_positives.parquet", "manifest.json"
QUERY_TABLE_FILE = "query_positives.parquet"


@dataclass(frozen=True)
class PseudoPositives:
    """Extra L_cl positives per search session (CSR over search.parquet rows)."""

    offsets: np.ndarray  # (n_sessions + 1,) int64
    items: np.ndarray  # (offsets[-1],) item indices


def load_pseudo_positives(dataset: PreparedDataset) -> PseudoPositives | None:
    """The augment job's output for `dataset`, as CSR over search sessions; None when the
    dataset was not augmented. QueryRecError when it was augmented for another dataset."""
    folder = dataset.root / AUGMENT_DIR
    if not (folder / MANIFEST_FILE).is_file():
        return None
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    if manifest.get("schema_hash") != dataset.content_hash:
        raise QueryRecError(
            f"{folder / MANIFEST_FILE}: pseudo-positives were made for dataset "
            f"{str(manifest.get('schema_hash'))[:12]}, not {dataset.content_hash[:12]}; rerun "
            "'queryrec diffusion augment'"
        )
    frame = pl.read_parquet(folder / POSITIVES_FILE)
    n_sessions = len(dataset.search_ts)
    counts = np.zeros(n_sessions, dtype=np.int64)
    sessions = frame["session"].to_numpy()
    lists = frame["items"].to_list()
    counts[sessions] = [len(x) for x in lists]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat = np.zeros(offsets[-1], dtype=np.int64)
    for session, values in zip(sessions, lists, strict=True):
        flat[offsets[session] : offsets[session + 1]] = values
    return PseudoPositives(offsets=offsets, items=flat)


def load_query_positives(dataset: PreparedDataset) -> QueryPositives | None:
    """The augment job's table by query for `dataset` (None when it was not augmented, or
    augmented before the table existed); QueryRecError when made for another dataset."""
    if load_pseudo_positives(dataset) is None:  # checks the manifest's dataset hash
        return None
    path = dataset.root / AUGMENT_DIR / QUERY_TABLE_FILE
    if not path.is_file():
        return None
    return QueryPositives.read(path, items=int(dataset.schema["vocab_sizes"]["items"]))
