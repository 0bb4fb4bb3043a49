"""`queryrec diffusion augment`: pseudo-positives for the training split's click-less queries.

For every training-split search session without a click: x0 is negative on its shown
items and 0 elsewhere (`queryrec.diffusion.x0`), the reverse process reconstructs x̃0, the known
negatives (its shown items) are removed, and the top-K items become the session's
pseudo-positives for L_cl. Written into the dataset folder's `augment/`
(`queryrec.features.pseudo_positives` lists the files and is their one reader).

`--reference category` writes the category reference's positives instead
(`category_reference.py`, not the paper's method; `source` says which): a yardstick for
what on-topic positives do for the CTR model.

`main_category_share` is a sanity check with no ground truth needed: the share of
pseudo-positives in the second-level category most common among the query's shown
items, beside the same share for the real clicks of clicked training queries.

"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from queryrec.device import resolve_device
from queryrec.diffusion.category_reference import CategoryReference, main_shown_category
from queryrec.diffusion.query_units import QueryUnits, diffusion_view
from queryrec.diffusion.train import load_model
from queryrec.diffusion.x0 import UNSEEN, sessions_in
from queryrec.errors import QueryRecError
from queryrec.features.dataset import PreparedDataset
from queryrec.features.pseudo_positives import (
    AUGMENT_DIR,
    MANIFEST_FILE,
    POSITIVES_FILE,
    QUERY_TABLE_FILE,
)
from queryrec.features.query_positives import table_from_sessions
from queryrec.progress import bar


def augment(
    data_dir: Path,
    model_dir: Path,
    *,
    k: int | None = None,
    batch_size: int = 512,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Write the pseudo-positives; -> the manifest."""
    torch_device = resolve_device(device)
    base = PreparedDataset(data_dir)
    model = load_model(model_dir, base, torch_device)
    # Per query (query_units.py): rows are click-less queries, written for all their sessions.
    dataset = diffusion_view(base, model.unit)
    top_k = int(k if k is not None else model.info["train"]["k"])
    valid_start = int(dataset.schema["split"]["valid_start_ms"])
    sessions = sessions_in(dataset, 0, valid_start, clicked=False)
    items = np.zeros((len(sessions), top_k), dtype=np.int64)
    start = time.perf_counter()
    for lo in bar(
        range(0, len(sessions), batch_size),
        desc="diffusion augment",
        unit="batch",
        enabled=progress,
    ):
        rows = sessions[lo : lo + batch_size]
        x0 = model.x0(dataset, rows, hide_clicks=True)  # (B, U)
        scores = model.scores(x0, torch_device, model.words(dataset, rows))  # (B, U)
        scores[x0 < UNSEEN] = -np.inf  # shown items: the known negatives
        top = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]  # (B, K) columns
        items[lo : lo + len(rows)] = model.universe.items[top]
    seconds = time.perf_counter() - start
    return write_positives(
        dataset,
        sessions,
        items,
        item_categories(dataset),
        {
            "source": "diffusion",
            "model_dir": str(Path(model_dir).resolve()),
            "model_best_epoch": model.info.get("best_epoch"),
            "universe_items": len(model.universe),
            "position_weight": model.position_weight,
            "unit": model.unit,
            "seconds": seconds,
            "queries_per_s": len(sessions) / max(seconds, 1e-9),
            "device": str(torch_device),
        },
    )


def augment_with_reference(data_dir: Path, *, k: int = 4) -> dict[str, Any]:
    """`diffusion augment --reference category`: the category reference's positives
    (`category_reference.py`, not the paper's method) in place of the diffusion ones;
    -> the manifest."""
    if k < 1:
        raise QueryRecError(f"--k must be at least 1, got {k}")
    dataset = PreparedDataset(data_dir)
    valid_start = int(dataset.schema["split"]["valid_start_ms"])
    sessions = sessions_in(dataset, 0, valid_start, clicked=False)
    clicked = sessions_in(dataset, 0, valid_start, clicked=True)
    start = time.perf_counter()
    category = item_categories(dataset)
    reference = CategoryReference(dataset, category, clicked)
    try:
        items = reference.positives(sessions, k)
    except ValueError as error:
        raise QueryRecError(f"{data_dir}: {error}") from error
    seconds = time.perf_counter() - start
    return write_positives(
        dataset,
        sessions,
        items,
        category,
        {
            "source": "category reference (most-clicked items of the main shown category)",
            "seconds": seconds,
            "queries_per_s": len(sessions) / max(seconds, 1e-9),
        },
    )


def write_positives(
    dataset: PreparedDataset,
    sessions: np.ndarray,
    items: np.ndarray,
    category: np.ndarray,
    details: dict[str, Any],
) -> dict[str, Any]:
    """Write (S,) click-less rows' (S, K) pseudo-positives and the manifest (the dataset
    hash, counts, `main_category_share` by `category` (`item_categories`), plus
    `details`); -> the manifest. Rows are search sessions, or, on the per-query view,
    queries, whose positives are written for each of their sessions."""
    valid_start = int(dataset.schema["split"]["valid_start_ms"])
    clicked = sessions_in(dataset, 0, valid_start, clicked=True)
    out = dataset.root / AUGMENT_DIR
    out.mkdir(exist_ok=True)
    rows, source = (
        dataset.sessions_of(sessions)
        if isinstance(dataset, QueryUnits)
        else (sessions, np.arange(len(sessions)))
    )
    pl.DataFrame({"session": rows, "items": items[source].tolist()}).write_parquet(
        out / POSITIVES_FILE
    )
    sessions_of = dataset.base if isinstance(dataset, QueryUnits) else dataset  # rows index it
    table = table_from_sessions(
        sessions_of.query_offsets,
        sessions_of.query_words,
        sessions_of.search_ts,
        rows,
        items[source],
    )
    table.write(out / QUERY_TABLE_FILE)
    manifest: dict[str, Any] = {
        "schema_hash": dataset.content_hash,
        "k": int(items.shape[1]),
        "sessions": len(rows),
        "query_table_entries": len(table),
        "queries" if isinstance(dataset, QueryUnits) else "rows": len(sessions),
        "main_category_share": {
            "pseudo_positives": main_category_share(dataset, category, sessions, items),
            "clicks_of_clicked_queries": main_category_share(
                dataset, category, clicked, dataset.clicked_items, dataset.clicked_offsets
            ),
        },
        **details,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def item_categories(dataset: PreparedDataset) -> np.ndarray:
    """(n_items,) second-level category of every item index; 0 / 1: missing / unknown."""
    table = pl.read_parquet(dataset.root / "features/items.parquet", columns=["category_2"])
    return table["category_2"].to_numpy()


def main_category_share(
    dataset: PreparedDataset,
    category: np.ndarray,
    sessions: np.ndarray,
    items: np.ndarray,
    offsets: np.ndarray | None = None,
) -> float:
    """Share of `items` (per session: row i of a (S, K) array, or CSR `items[offsets[r]:
    offsets[r + 1]]` for session row r) in the second-level category most common among
    that session's shown items (`category` from `item_categories`). Sessions whose shown
    items have no category are skipped."""
    hits = total = 0
    for i, row in enumerate(sessions):
        main = main_shown_category(dataset, category, int(row))
        if main < 0:
            continue
        chosen = items[i] if offsets is None else items[offsets[row] : offsets[row + 1]]
        hits += int((category[chosen] == main).sum())
        total += len(chosen)
    return hits / max(total, 1)
