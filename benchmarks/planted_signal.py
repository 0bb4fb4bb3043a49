"""How much click signal sits in the query history beyond the click history? (diagnostic)

Fits two logistic regressions on hand-made features of a prepared dataset and reports
test AUC: (A) click-history and popularity features, the kind of evidence DIN sees;
(B) A plus query-history features (does the candidate's topic or caption match the user's
recent queries, weighted by their age). The gap is a rough indication of what a query
representation can add; it is not a result of the QueryRec model.

    python benchmarks/planted_signal.py --data DATA_DIR [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from queryrec.features.dataset import PreparedDataset
from queryrec.features.model_inputs import HistoryLengths, history_windows, inputs_from_windows
from queryrec.features.time_features import HOUR_MS


def features(
    ds: PreparedDataset,
    samples: pl.DataFrame,
    topic: np.ndarray,
    caption_sets: list[set[int]],
    popularity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    users = samples["user"].to_numpy()
    items = samples["item"].to_numpy()
    ts = samples["ts"].to_numpy()
    events, lengths = ds.timelines(), HistoryLengths(clicks=50, queries=3, tokens=8)
    windows = history_windows(events, users, ts, lengths)
    inputs = inputs_from_windows(events, windows, lengths, items)
    clicked = inputs.click_history
    cand_topic = topic[items][:, None]
    valid = clicked > 0
    lengths = valid.sum(1)
    same = (topic[clicked] == cand_topic) & valid
    n = np.maximum(lengths, 1)
    recent = same[:, -10:].sum(1) / np.maximum(valid[:, -10:].sum(1), 1)
    history = np.column_stack(
        [same.sum(1) / n, recent, np.log1p(lengths), np.log1p(popularity[items])]
    )

    sessions = windows.query_index  # (B, 3) rows of search.parquet, -1 = none
    query_ts = ds.search_ts[np.maximum(sessions, 0)]
    age_h = np.where(sessions >= 0, (ts[:, None] - query_ts) / HOUR_MS, 1e6)
    decay = np.exp(-age_h / 24.0)
    topic_match = np.zeros_like(decay)
    word_match = np.zeros_like(decay)
    for row in range(len(items)):
        for slot in range(3):
            session = sessions[row, slot]
            if session < 0:
                continue
            shown = ds.shown_items[ds.shown_offsets[session] : ds.shown_offsets[session + 1]]
            if len(shown):
                topics, counts = np.unique(topic[shown], return_counts=True)
                topic_match[row, slot] = topics[counts.argmax()] == topic[items[row]]
            tokens = inputs.query_tokens[row, slot]
            words = set(tokens[tokens > 0].tolist())
            word_match[row, slot] = bool(words & caption_sets[items[row]])
    query = np.column_stack(
        [topic_match * decay, word_match * decay, topic_match[:, -1], decay[:, -1]]
    )
    return history, np.column_stack([history, query])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--train-rows", type=int, default=60_000)
    args = parser.parse_args()
    ds = PreparedDataset(args.data)
    items = pl.read_parquet(args.data / "features/items.parquet")
    topic = items["category_2"].to_numpy()
    caption_sets = [set(c) for c in items["caption"].to_list()]
    train_all = ds.samples("train")
    popularity = np.bincount(train_all["item"].to_numpy(), minlength=len(topic)).astype(float)
    train = train_all.sample(min(args.train_rows, train_all.height), seed=0)
    test = ds.samples("test")
    result: dict[str, float] = {}
    train_a, train_b = features(ds, train, topic, caption_sets, popularity)
    test_a, test_b = features(ds, test, topic, caption_sets, popularity)
    for name, x_train, x_test in (
        ("history", train_a, test_a),
        ("history+queries", train_b, test_b),
    ):
        scaler = StandardScaler().fit(x_train)
        model = LogisticRegression(max_iter=1000).fit(
            scaler.transform(x_train), train["label"].to_numpy()
        )
        score = model.predict_proba(scaler.transform(x_test))[:, 1]
        result[name] = float(roc_auc_score(test["label"].to_numpy(), score))
    result["relative_lift"] = result["history+queries"] / result["history"] - 1
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
