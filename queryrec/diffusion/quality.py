"""How good are the pseudo-positives? Hidden-click evaluation against three references.

The clicked queries of the validation period (after the training split: never trained
on, and not the held-out training queries that picked the best epoch) have their clicks
hidden: x0 is built as if they were click-less (every shown item -1), exactly the
augmentation's input. Each
method ranks the session's shown items, and recall@K / NDCG@K measure how many of the
hidden clicks its top K holds. The shown items are the candidates because that is where
the hidden clicks are known to be; augmentation itself ranks the items a click-less
query did not show (its shown items are known negatives there), which has no ground
truth to score against.

Methods: the diffusion model (reverse process), (a) the most popular items among the
shown ones (click counts over the fit sessions), (b) random shown items, (c) the same
network trained as a plain autoencoder (no noise, one pass); and, outside the three
references, the first shown positions: display order is the generator's strongest
click signal and x0 carries it only as a grade, so the table shows it rather than hide it. The
unshown-items table adds the category reference (`category_reference.py`): it reads item
categories, which the diffusion model never sees, and marks what a ranking that knows the
query's topic reaches.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from queryrec.device import resolve_device
from queryrec.diffusion.augment import item_categories
from queryrec.diffusion.category_reference import CategoryReference
from queryrec.diffusion.query_units import diffusion_view
from queryrec.diffusion.train import (
    DiffusionModel,
    hidden_clicks_per_session,
    load_model,
    split_sessions,
)
from queryrec.diffusion.x0 import sessions_in
from queryrec.errors import QueryRecError
from queryrec.features.dataset import PreparedDataset

CATEGORY_REFERENCE = "most-clicked of the main shown category (outside the three; reads categories)"


def display_order(dataset: PreparedDataset, model: DiffusionModel, rows: np.ndarray) -> np.ndarray:
    """(B, U) scores that rank each session's shown items by display position (first
    shown first); other items 0."""
    scores = np.zeros((len(rows), len(model.universe)))
    for i, row in enumerate(rows):
        shown = dataset.shown_items[dataset.shown_offsets[row] : dataset.shown_offsets[row + 1]]
        columns = model.universe.column[shown.astype(np.int64)]
        for position, column in reversed(list(enumerate(columns))):  # first occurrence wins
            if column >= 0:
                scores[i, column] = len(columns) - position
    return scores


def augmentation_quality(
    dataset: PreparedDataset,
    diffusion: DiffusionModel,
    autoencoder: DiffusionModel | None,
    device: torch.device,
) -> dict[str, Any]:
    """recall@K and NDCG@K of every method on the diffusion model's held-out sessions."""
    train = diffusion.info["train"]
    k = int(train["k"])
    fit_rows, _ = split_sessions(dataset, float(train["holdout"]), int(train["seed"]))
    split = dataset.schema["split"]
    held_out = sessions_in(
        dataset, int(split["valid_start_ms"]), int(split["test_start_ms"]), clicked=True
    )
    topic = CategoryReference(dataset, item_categories(dataset), fit_rows)
    popularity = topic.clicks[diffusion.universe.items]  # (U,) clicks per universe item
    rng = np.random.default_rng(int(train["seed"]))
    methods = {
        "diffusion": lambda x0, rows: diffusion.scores(x0, device, diffusion.words(dataset, rows)),
        "popular shown items": lambda x0, _: np.broadcast_to(popularity, x0.shape),
        "random shown items": lambda x0, _: rng.random(x0.shape),
    }
    if autoencoder is not None:
        methods["autoencoder (no diffusion)"] = lambda x0, rows: autoencoder.scores(
            x0, device, autoencoder.words(dataset, rows)
        )
    # Not one of the three references, but the strongest signal of the generator:
    # without it the table would hide that x0 carries no display order.
    methods["first shown positions (outside the three)"] = lambda x0, rows: display_order(
        dataset, diffusion, rows
    )
    shown = _scored(dataset, diffusion, held_out, k, methods, int(train["seed"]), unshown=False)
    # What augmentation does: rank the items a query did not show.
    unshown_methods = {
        "diffusion": methods["diffusion"],
        "popular items": methods["popular shown items"],
        "random unshown items": methods["random shown items"],
    }
    if autoencoder is not None:
        unshown_methods["autoencoder (no diffusion)"] = methods["autoencoder (no diffusion)"]
    # Outside the three as well: the topic heuristic, which reads item categories.
    unshown_methods[CATEGORY_REFERENCE] = lambda _, rows: topic.scores(
        rows, diffusion.universe.items
    )
    unshown = _scored(
        dataset, diffusion, held_out, k, unshown_methods, int(train["seed"]), unshown=True
    )
    return {
        "k": k,
        "held_out_sessions": len(held_out),
        "methods": shown["methods"],
        "recall_gaps": shown["gaps"],
        "unshown_methods": unshown["methods"],
        "unshown_recall_gaps": unshown["gaps"],
    }


def _scored(
    dataset: PreparedDataset,
    model: DiffusionModel,
    sessions: np.ndarray,
    k: int,
    methods: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
    seed: int,
    *,
    unshown: bool,
) -> dict[str, Any]:
    """Every method's mean recall / NDCG and the diffusion model's paired recall lead."""
    per_session = {
        name: hidden_clicks_per_session(dataset, model, sessions, k, score, unshown=unshown)
        for name, score in methods.items()
    }
    results = {
        name: {"recall": float(r.mean()), "ndcg": float(n.mean()), "sessions": float(len(r))}
        for name, (r, n) in per_session.items()
    }
    recall = per_session["diffusion"][0]
    gaps = {
        name: paired_gap(recall, r, seed)
        for name, (r, _) in per_session.items()
        if name != "diffusion"
    }
    return {"methods": results, "gaps": gaps}


def paired_gap(
    ours: np.ndarray, theirs: np.ndarray, seed: int, resamples: int = 2000
) -> dict[str, float]:
    """Mean per-query recall difference (ours - theirs) with a 95 % paired bootstrap
    interval over the queries: whether a gap in the table is more than which queries
    happened to be held out."""
    diff = ours - theirs  # (S,)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high)}


def write_quality(quality: dict[str, Any], out_dir: Path) -> None:
    """results.json and RESULTS.md (the augmentation-quality table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(quality, indent=2) + "\n")
    k = quality["k"]
    lines = [
        "# Diffusion pseudo-positives: hidden-click evaluation",
        "",
        f"{quality['held_out_sessions']} clicked queries of the validation period "
        f"({int(next(iter(quality['methods'].values()))['sessions'])} with a click inside the "
        "item universe are scored), clicks hidden (x0 as if click-less); each method ranks "
        "the query's shown items (a query is one search session, or with `diffusion train "
        "--unit query` every session of the query in the period, pooled).",
        "",
        f"| method | recall@{k} | NDCG@{k} | diffusion's recall lead, 95 % interval |",
        "|---|---|---|---|",
    ]
    lines += _table_rows(quality["methods"], quality.get("recall_gaps", {}))
    if "unshown_methods" in quality:
        lines += [
            "",
            "The task augmentation has: the clicks taken out of x0 altogether (as if never "
            "shown), every item the query did not show ranked:",
            "",
            f"| method | recall@{k} | NDCG@{k} | diffusion's recall lead, 95 % interval |",
            "|---|---|---|---|",
            *_table_rows(quality["unshown_methods"], quality["unshown_recall_gaps"]),
        ]
    lines += [
        "",
        "The interval is a paired bootstrap over the scored queries (2,000 resamples).",
    ]
    (out_dir / "RESULTS.md").write_text("\n".join(lines) + "\n")


def run_quality(data_dir: Path, model_dir: Path, device: str) -> str:
    """`queryrec diffusion quality`: the table for a saved model and, when MODEL/autoencoder
    exists, its autoencoder reference; written into MODEL; -> the markdown."""
    dataset = PreparedDataset(data_dir)
    torch_device = resolve_device(device)
    diffusion = load_model(model_dir, dataset, torch_device)
    reference = Path(model_dir) / "autoencoder"
    autoencoder = load_model(reference, dataset, torch_device) if reference.is_dir() else None
    if autoencoder is not None and autoencoder.unit != diffusion.unit:
        raise QueryRecError(
            f"{reference}: x0 per {autoencoder.unit}, but the diffusion model's is per "
            f"{diffusion.unit}; retrain them together"
        )
    # Per query: the held-out validation-period queries are units too (query_units.py).
    dataset = diffusion_view(dataset, diffusion.unit)
    write_quality(augmentation_quality(dataset, diffusion, autoencoder, torch_device), model_dir)
    return (Path(model_dir) / "RESULTS.md").read_text()


def _table_rows(methods: dict[str, Any], gaps: dict[str, Any]) -> list[str]:
    rows = []
    for name, m in methods.items():
        gap = gaps.get(name)
        lead = f"{gap['mean']:+.4f} [{gap['low']:+.4f}, {gap['high']:+.4f}]" if gap else "-"
        rows.append(f"| {name} | {m['recall']:.4f} | {m['ndcg']:.4f} | {lead} |")
    return rows
