"""`data prepare` on the tiny preset: round trip, id maps, schema, split and robustness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from app.cli import main
from queryrec.data.kuaisar import ITEM_FEATURES, REC_INTER, SRC_INTER, USER_FEATURES
from queryrec.data.prepare import PrepareConfig, run_prepare
from queryrec.errors import SchemaMismatchError
from queryrec.features.schema import load_schema, sha256_file

DATA_FILES = [
    "maps/users.parquet",
    "maps/items.parquet",
    "maps/words.parquet",
    "maps/authors.parquet",
    "maps/categories.parquet",
    "features/items.parquet",
    "features/users.parquet",
    "timelines/feed.parquet",
    "timelines/search.parquet",
    "samples/train.parquet",
    "samples/valid.parquet",
    "samples/test.parquet",
]


def test_writes_every_file_and_a_valid_schema(tiny_data: Path) -> None:
    schema = load_schema(tiny_data, verify_files=True)
    assert sorted(schema["files"]) == sorted(DATA_FILES)
    assert (tiny_data / "STATS.md").read_text().startswith("# Dataset statistics")
    stats = json.loads((tiny_data / "stats.json").read_text())
    assert stats["content_hash"] == schema["content_hash"]
    assert schema["max_lengths"] == {
        "click_history": 50,
        "query_history": 20,
        "query_tokens": 8,
        "caption_tokens": 16,
    }


def test_round_trip_counts_match_the_raw_files(tiny_raw: Path, tiny_data: Path) -> None:
    rec = pl.read_csv(tiny_raw / REC_INTER.name)
    src = pl.read_csv(tiny_raw / SRC_INTER.name)
    feed = pl.read_parquet(tiny_data / "timelines/feed.parquet")
    search = pl.read_parquet(tiny_data / "timelines/search.parquet")
    samples = pl.concat(
        [pl.read_parquet(tiny_data / f"samples/{s}.parquet") for s in ("train", "valid", "test")]
    )
    assert feed.height == rec.height == samples.height
    assert int(feed["click"].sum()) == int(rec["click"].sum()) == int(samples["label"].sum())
    assert search.height == src.select("user_id", "search_session_id").n_unique()
    assert int(search["shown"].list.len().sum()) == src.height
    assert int(search["clicked"].list.len().sum()) == int(src["click_cnt"].sum())
    assert sorted(samples["feed_pos"].to_list()) == list(range(feed.height))


def test_maps_reserve_padding_and_unknown(tiny_raw: Path, tiny_data: Path) -> None:
    for name, raw in [
        ("users", pl.read_csv(tiny_raw / USER_FEATURES.name)["user_id"]),
        ("items", pl.read_csv(tiny_raw / REC_INTER.name)["item_id"]),
    ]:
        mapping = pl.read_parquet(tiny_data / f"maps/{name}.parquet")
        assert mapping["index"].min() == 2
        assert mapping["index"].to_list() == list(range(2, 2 + mapping.height))
        assert set(raw.to_list()) <= set(mapping["raw_id"].to_list())
    items = pl.read_parquet(tiny_data / "features/items.parquet")
    schema = load_schema(tiny_data)
    assert items.height == schema["vocab_sizes"]["items"]
    assert items["index"].to_list() == list(range(items.height))
    assert not items["has_features"][0] and not items["has_features"][1]
    # Items in the logs without an item_features row: unknown (1) side features.
    missing = items.filter(~pl.col("has_features") & (pl.col("index") >= 2))
    assert missing.height > 0
    assert (missing["category_1"] == 1).all() and (missing["author"] == 1).all()
    # KuaiSAR's "missing" (author 0, category 0) is padding (0), not unknown.
    present = items.filter(pl.col("has_features"))
    assert (present["author"] == 0).any() and (present["category_4"] == 0).any()


def test_query_and_caption_words_share_one_map(tiny_raw: Path, tiny_data: Path) -> None:
    words = pl.read_parquet(tiny_data / "maps/words.parquet")
    index_of = dict(zip(words["raw_id"].to_list(), words["index"].to_list(), strict=True))
    src = pl.read_csv(tiny_raw / SRC_INTER.name)
    first = src.row(0, named=True)
    search = pl.read_parquet(tiny_data / "timelines/search.parquet")
    user_map = pl.read_parquet(tiny_data / "maps/users.parquet")
    user = user_map.filter(pl.col("raw_id") == first["user_id"])["index"][0]
    session = search.filter(
        (pl.col("user") == user) & (pl.col("session_id") == first["search_session_id"])
    ).row(0, named=True)
    assert session["query"] == [index_of[w] for w in json.loads(first["keyword"])]


def test_split_is_disjoint_in_time_and_ordered(tiny_data: Path) -> None:
    schema = load_schema(tiny_data)
    train, valid, test = (
        pl.read_parquet(tiny_data / f"samples/{s}.parquet") for s in ("train", "valid", "test")
    )
    assert train.height > valid.height > 0 and test.height > 0
    assert train["ts"].max() < valid["ts"].min() <= valid["ts"].max() < test["ts"].min()
    assert train["ts"].max() < schema["split"]["valid_start_ms"] <= valid["ts"].min()
    assert valid["ts"].max() < schema["split"]["test_start_ms"] <= test["ts"].min()
    for frame in (train, valid, test):
        assert frame["ts"].is_sorted()
    assert (train["user_seen_in_train"]).all() and (train["item_seen_in_train"]).all()


def test_real_archive_folder_is_read_as_is(tiny_raw: Path, tiny_data: Path, tmp_path: Path) -> None:
    """KuaiSAR.zip unpacks to KuaiSAR_final/: both that folder and its parent work."""
    unzipped = tmp_path / "unzipped"
    shutil.copytree(tiny_raw, unzipped / "KuaiSAR_final")
    (unzipped / "KuaiSAR_final" / "synth_manifest.json").unlink()
    out = tmp_path / "data"
    run_prepare(unzipped, out)
    assert _data_hashes(out) == _data_hashes(tiny_data)


def test_column_order_extra_columns_bom_and_float_formats(
    tiny_raw: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """Columns are matched by name; a BOM, blanks around header names, extra columns,
    scientific-notation floats and integral-float ids (as pandas writes them) read the same."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    rec = pl.read_csv(raw / REC_INTER.name, infer_schema=False)
    rec = rec.with_columns(
        pl.col("timestamp")
        .cast(pl.Float64)
        .map_elements(lambda v: f"{v:.12e}", return_dtype=pl.String),
        (pl.col("user_id") + ".0").alias("user_id"),
        pl.lit("x").alias("Unnamed: 0"),
    )
    rec.select(list(reversed(rec.columns))).write_csv(raw / REC_INTER.name)
    text = (raw / SRC_INTER.name).read_text(encoding="utf-8")
    (raw / SRC_INTER.name).write_text("\ufeff" + text, encoding="utf-8")
    users = (raw / USER_FEATURES.name).read_text(encoding="utf-8").split("\n", 1)
    (raw / USER_FEATURES.name).write_text(users[0].replace(",", " , ") + "\n" + users[1])
    items = pl.read_csv(raw / ITEM_FEATURES.name, infer_schema=False)
    items.select(list(reversed(items.columns))).write_csv(raw / ITEM_FEATURES.name)
    out = tmp_path / "data"
    run_prepare(raw, out)
    assert _data_hashes(out) == _data_hashes(tiny_data)


def test_social_network_is_optional(raw_copy: Path, tmp_path: Path) -> None:
    (raw_copy / "social_network.csv").unlink()
    out = tmp_path / "data"
    run_prepare(raw_copy, out)
    assert json.loads((out / "stats.json").read_text())["follow_edges"] is None


def test_schema_detects_changes(tiny_data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    load_schema(copy, expected_hash=load_schema(tiny_data)["content_hash"])
    with pytest.raises(SchemaMismatchError, match="differs from the expected"):
        load_schema(copy, expected_hash="0" * 64)
    (copy / "maps/users.parquet").write_bytes(b"tampered")
    with pytest.raises(SchemaMismatchError, match=r"users\.parquet: sha256 differs"):
        load_schema(copy)
    schema = json.loads((copy / "schema.json").read_text())
    schema["max_lengths"]["click_history"] = 99
    (copy / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(SchemaMismatchError, match="content hash"):
        load_schema(copy, verify_files=False)


def test_config_changes_the_split_and_the_hash(
    tiny_raw: Path, tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "data"
    run_prepare(tiny_raw, out, PrepareConfig(valid_fraction=0.2, test_fraction=0.2))
    schema, default = load_schema(out), load_schema(tiny_data)
    assert schema["content_hash"] != default["content_hash"]
    assert schema["split"]["valid_start_ms"] < default["split"]["valid_start_ms"]


def test_prepare_cli_prints_statistics(
    tiny_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    assert main(["data", "prepare", "--raw", str(tiny_raw), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| train |" in captured.out and "sessions without a click" in captured.out
    assert "[prepare] reading rec_inter.csv" in captured.err  # progress goes to stderr


def _data_hashes(dataset: Path) -> dict[str, str]:
    return {name: sha256_file(dataset / name) for name in DATA_FILES}


def test_timelines_are_time_ordered_per_user(tiny_data: Path) -> None:
    for name in ("feed", "search"):
        frame = pl.read_parquet(tiny_data / f"timelines/{name}.parquet")
        user, ts = frame["user"].to_numpy(), frame["ts"].to_numpy()
        order = np.lexsort((ts, user))
        assert (order == np.arange(len(order))).all()


def test_heavily_tied_timestamps_still_split(raw_copy: Path, tmp_path: Path) -> None:
    """Three distinct feed times (e.g. day-granular data) give three non-empty splits."""
    rec = pl.read_csv(raw_copy / REC_INTER.name, infer_schema=False)
    n = rec.height
    stamps = ["1684742000000.0"] * (n - 2) + ["1684828400000.0", "1684914800000.0"]
    rec.with_columns(pl.Series("timestamp", stamps)).write_csv(raw_copy / REC_INTER.name)
    out = tmp_path / "data"
    run_prepare(raw_copy, out)
    sizes = [
        pl.read_parquet(out / f"samples/{s}.parquet").height for s in ("train", "valid", "test")
    ]
    assert sizes == [n - 2, 1, 1]


def test_single_timestamp_cannot_be_split(
    raw_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = pl.read_csv(raw_copy / REC_INTER.name, infer_schema=False)
    rec.with_columns(pl.lit("1684742000000.0").alias("timestamp")).write_csv(
        raw_copy / REC_INTER.name
    )
    assert main(["data", "prepare", "--raw", str(raw_copy), "--out", str(tmp_path / "d")]) == 2
    assert "column 'timestamp'" in capsys.readouterr().err


def test_train_feed_fraction_thins_training_impressions_only(
    tiny_raw: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The low-data regime: a share of training-period feed rows is dropped everywhere;
    the split cuts, validation, test and search data are those of the full log."""
    out = tmp_path / "thin"
    assert main(["data", "prepare", "--raw", str(tiny_raw), "--out", str(out),
                 "--train-feed-fraction", "0.3"]) == 0  # fmt: skip
    full, thin = load_schema(tiny_data), load_schema(out)
    assert thin["split"] == full["split"]
    rows = {
        name: (pl.read_parquet(tiny_data / f"samples/{name}.parquet").height,
               pl.read_parquet(out / f"samples/{name}.parquet").height)
        for name in ("train", "valid", "test")
    }  # fmt: skip
    assert rows["valid"][0] == rows["valid"][1] and rows["test"][0] == rows["test"][1]
    assert 0.2 < rows["train"][1] / rows["train"][0] < 0.4
    feed_full = pl.read_parquet(tiny_data / "timelines/feed.parquet").height
    feed_thin = pl.read_parquet(out / "timelines/feed.parquet").height
    assert feed_thin == rows["train"][1] + rows["valid"][1] + rows["test"][1] < feed_full
    searches = [pl.read_parquet(d / "timelines/search.parquet").height for d in (tiny_data, out)]
    assert searches[0] == searches[1]
    capsys.readouterr()
    assert main(["data", "prepare", "--raw", str(tiny_raw), "--out", str(tmp_path / "x"),
                 "--train-feed-fraction", "0"]) == 2  # fmt: skip
    assert "--train-feed-fraction must be in (0, 1]" in capsys.readouterr().err
