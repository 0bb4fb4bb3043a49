"""The graph throughput table (what gpu_bench.sh runs on CUDA), on the CPU at tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from loadtest.bench import full_history_feeds
from loadtest.graph_throughput import ctr_batch, main, powers_of_two


def test_powers_of_two_end_at_the_limit() -> None:
    assert list(powers_of_two(1)) == [1]
    assert list(powers_of_two(8)) == [1, 2, 4, 8]
    assert list(powers_of_two(6)) == [1, 2, 4, 6]


def test_a_tiled_ctr_batch_scores_every_user_like_the_single_one(bundle: Path) -> None:
    """Tiling the one-user feed gives `users` identical requests: same scores each."""
    from service.inference.bundle_loader import load_bundle

    encoder_feed, feed = full_history_feeds(bundle, 5)
    # A full history: every query slot holds a search with words and clicked results.
    assert encoder_feed is not None
    assert (encoder_feed["query_age"] > 0).all() and (encoder_feed["query_clicks"] > 0).all()
    assert (feed["click_history"] > 0).all()
    ctr = load_bundle(bundle, device="cpu").ctr
    one = ctr.run(None, feed)[0]
    three = ctr.run(None, ctr_batch(feed, 3, 5))[0]
    assert three.shape == (15,)
    np.testing.assert_allclose(three.reshape(3, 5), np.tile(one, (3, 1)), rtol=1e-5, atol=1e-6)


def test_the_split_feeds_score_as_the_single_graph(bundle: Path) -> None:
    from loadtest.graph_throughput import split_feeds
    from service.inference.bundle_loader import load_bundle

    loaded = load_bundle(bundle, device="cpu")
    assert loaded.ctr_user is not None and loaded.ctr_pair is not None
    _, feed = full_history_feeds(bundle, 5)
    _, pair_feed = split_feeds(loaded.manifest["graphs"], loaded.ctr_user, feed)
    np.testing.assert_allclose(
        loaded.ctr_pair.run(None, ctr_batch(pair_feed, 2, 5))[0],
        loaded.ctr.run(None, ctr_batch(feed, 2, 5))[0],
        atol=1e-6,
    )


def test_the_cli_writes_a_row_per_shape(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    main(
        [
            "--bundle",
            str(bundle),
            "--max-batch",
            "4",
            "--candidates",
            "3",
            "--seconds",
            "0.01",
            "--out",
            str(out),
        ]
    )
    table = json.loads(out.read_text())
    assert table["device"] == "cpu" and table["providers"][0] == "CPUExecutionProvider"
    assert [row["users"] for row in table["ctr"]] == [1, 2, 4]
    assert [row["pairs"] for row in table["ctr"]] == [3, 6, 12]
    assert all(row["pairs_per_s"] > 0 for row in table["ctr"])
    # The bundle's model (queryrec) has a query tower: its encoder is measured too.
    assert [row["users"] for row in table["encoder"]] == [1, 2, 4]
    assert all(row["users_per_s"] > 0 for row in table["encoder"])
    # ... and its CTR graph is split: the pair graph at the same shapes, the user graph.
    assert [row["pairs"] for row in table["ctr_pair"]] == [3, 6, 12]
    assert [row["users"] for row in table["ctr_user"]] == [1, 2, 4]
