"""What `data synth` writes: the real headers, value formats and the planted phenomena."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from app.cli import main
from queryrec.data.kuaisar import (
    ALL_FILES,
    BEIJING_OFFSET_MS,
    FEED_ITEM_TYPES,
    ITEM_FEATURES,
    REC_INTER,
    SEARCH_ONLY_ITEM_TYPES,
    SRC_INTER,
)
from queryrec.data.synth import preset_config, run_synth
from queryrec.data.synth_latent import run_latent_synth
from queryrec.data.tokens import parse_token_list

# The released headers, spelled out here rather than imported: this pins the format.
RELEASED_HEADERS = {
    "rec_inter.csv": "user_id,item_id,duration_ms,playing_time,timestamp,forward,like,follow,"
    "search_item_related,search,click,time",
    "src_inter.csv": "keyword,item_id,click_cnt,search_session_id,item_type,user_id,"
    "search_session_timestamp,search_source,search_session_time",
    "user_features.csv": "user_id,search_active_level,rec_active_level,onehot_feat1,onehot_feat2",
    "item_features.csv": "item_id,caption,author_id,item_type,upload_time,upload_type,music_id,"
    + ",".join(
        f"{lvl}_level_category_id,{lvl}_level_category_name,{lvl}_level_category_name_en"
        for lvl in ("first", "second", "third", "fourth")
    ),
    "social_network.csv": "user_id,user_follow_id",
}
BEIJING = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def _text(raw: Path, name: str) -> pl.DataFrame:
    return pl.read_csv(raw / name, infer_schema=False)


@pytest.fixture(scope="module", params=["topics", "latent"])
def any_raw(
    request: pytest.FixtureRequest, tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`tiny`, seed 0, from each generator: both must write the released format."""
    if request.param == "topics":
        return tiny_raw
    out = tmp_path_factory.mktemp("latent") / "tiny"
    run_latent_synth(out, "tiny", 0)
    return out


@pytest.mark.parametrize("name", list(RELEASED_HEADERS))
def test_headers_are_the_released_ones(any_raw: Path, name: str) -> None:
    first_line = (any_raw / name).read_text(encoding="utf-8").splitlines()[0]
    assert first_line == RELEASED_HEADERS[name]
    assert {spec.name for spec in ALL_FILES} == set(RELEASED_HEADERS)


def test_rec_inter_formats(any_raw: Path) -> None:
    rec = _text(any_raw, REC_INTER.name)
    assert rec["timestamp"].str.contains(r"^\d{13}\.0$").all()  # float Unix ms
    assert rec["duration_ms"].str.contains(r"^\d+\.\d+$").all()
    assert rec["time"].str.contains(BEIJING.pattern).all()
    for flag in ("click", "like", "follow", "forward", "search", "search_item_related"):
        assert set(rec[flag].unique().to_list()) <= {"0", "1"}
    # `time` is `timestamp` in Beijing time (UTC+8), to the second.
    ms = rec["timestamp"].cast(pl.Float64).cast(pl.Int64).to_numpy()
    beijing = (ms + BEIJING_OFFSET_MS).astype("datetime64[ms]").astype("datetime64[s]").astype(str)
    assert [t.replace("T", " ") for t in beijing] == rec["time"].to_list()
    # Feed batches: several items served to one user at one timestamp.
    ties = rec.group_by(["user_id", "timestamp"]).len()
    assert (ties["len"] > 1).mean() > 0.5
    # Labels near 1:1.
    assert 0.4 < rec["click"].cast(pl.Int8).mean() < 0.6


def test_src_inter_formats(any_raw: Path) -> None:
    src = _text(any_raw, SRC_INTER.name)
    for keyword in src["keyword"].unique().to_list():
        assert keyword == json.dumps(parse_token_list(keyword))
    assert src["search_session_timestamp"].str.contains(r"^\d{13}$").all()  # integer ms
    assert src["search_session_time"].str.contains(BEIJING.pattern).all()
    types = set(src["item_type"].unique().to_list())
    assert set(FEED_ITEM_TYPES) <= types
    assert types & set(SEARCH_ONLY_ITEM_TYPES)  # search-only types appear in search
    # One session = one (user, session id): one keyword list, one timestamp.
    per_session = src.group_by(["user_id", "search_session_id"]).agg(
        pl.col("keyword").n_unique(), pl.col("search_session_timestamp").n_unique()
    )
    assert (per_session["keyword"] == 1).all()
    assert (per_session["search_session_timestamp"] == 1).all()
    # About 40 % of sessions without a click.
    clicked = src.group_by(["user_id", "search_session_id"]).agg(
        (pl.col("click_cnt").cast(pl.Int8).max() > 0).alias("any")
    )
    assert 0.3 < 1 - clicked["any"].mean() < 0.5


def test_item_features_formats(any_raw: Path) -> None:
    items = _text(any_raw, ITEM_FEATURES.name)
    assert items["item_id"].cast(pl.Int64).max() > 10**9  # large ids, like the release
    assert items["caption"].str.contains(r"^\[[0-9, ]*\]$").all()
    assert (items["author_id"] == "0").any()  # missing author convention
    assert (items["upload_time"] == "1970-01-01").any()  # missing upload time convention
    assert items["upload_time"].str.contains(r"^\d{4}-\d{2}-\d{2}$").all()
    assert items["music_id"].str.contains(r"^\d+$").all()
    for level in ("first", "second", "third", "fourth"):
        ids = items[f"{level}_level_category_id"]
        names = items[f"{level}_level_category_name"]
        english = items[f"{level}_level_category_name_en"]
        assert names.filter(ids != "0").str.contains(r"[\u4e00-\u9fff]").all()  # Chinese
        missing = ids == "0"
        assert (names.filter(missing) == "空").all()
        assert (english.filter(missing) == "empty").all()
    assert (items["third_level_category_id"] == "0").any()
    assert (items["fourth_level_category_id"] == "0").mean() > 0.5
    # Feed items are only VIDEO / IMAGE_ATLAS in search results, i.e. NORMAL here.
    rec_items = set(_text(any_raw, REC_INTER.name)["item_id"].unique().to_list())
    rec_types = items.filter(pl.col("item_id").is_in(list(rec_items)))["item_type"].unique()
    assert rec_types.to_list() == ["NORMAL"]


def test_query_words_appear_in_captions_of_what_was_searched(any_raw: Path) -> None:
    src = _text(any_raw, SRC_INTER.name)
    items = _text(any_raw, ITEM_FEATURES.name)
    caption_of = dict(zip(items["item_id"], items["caption"], strict=True))
    clicked = src.filter(pl.col("click_cnt") == "1")
    shared = [
        bool(set(parse_token_list(k)) & set(parse_token_list(caption_of[i])))
        for k, i in zip(clicked["keyword"], clicked["item_id"], strict=True)
        if i in caption_of
    ]
    assert np.mean(shared) > 0.6


def test_manifest_records_the_planted_effect(any_raw: Path) -> None:
    manifest = json.loads((any_raw / "synth_manifest.json").read_text())
    auc = manifest["planted_auc"]
    # The intent term, which the queries reveal early, is a real part of the signal.
    assert auc["true_probability"] > auc["without_intent_term"] + 0.03
    assert manifest["feed_click_rate"] == pytest.approx(0.5, abs=0.05)


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_raw: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    other = tmp_path / "other"
    run_synth(again, preset_config("tiny", 0))
    run_synth(other, preset_config("tiny", 1))
    for spec in ALL_FILES:
        assert (again / spec.name).read_bytes() == (tiny_raw / spec.name).read_bytes()
    assert (other / REC_INTER.name).read_bytes() != (tiny_raw / REC_INTER.name).read_bytes()


def test_synth_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "raw"
    assert main(["data", "synth", "--out", str(out), "--preset", "tiny", "--seed", "3"]) == 0
    assert "rec_inter.csv" in capsys.readouterr().out
    with (out / "user_features.csv").open() as handle:
        assert len(list(csv.reader(handle))) == 151
    # A second run refuses to overwrite, --force replaces.
    assert main(["data", "synth", "--out", str(out), "--preset", "tiny"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(out), "--preset", "tiny", "--force"]) == 0
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_tail_queries_use_words_of_their_own_and_mostly_go_unclicked(
    tiny_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tail"
    assert (
        main(["data", "synth", "--out", str(out), "--preset", "tiny", "--tail-query-share", "0.4"])
        == 0
    )
    base, tail = _text(tiny_raw, SRC_INTER.name), _text(out, SRC_INTER.name)
    # Same sessions and shown items as the default story; only wording and clicks moved.
    assert base["item_id"].to_list() == tail["item_id"].to_list()
    known = {w for text in base["keyword"] for w in parse_token_list(text)}
    known |= {
        w for text in _text(out, ITEM_FEATURES.name)["caption"] for w in parse_token_list(text)
    }
    sessions = tail.group_by(["user_id", "search_session_id"], maintain_order=True).agg(
        pl.col("keyword").first(), (pl.col("click_cnt") == "1").any().alias("clicked")
    )
    is_tail = np.array([not set(parse_token_list(k)) & known for k in sessions["keyword"]])
    clicked = sessions["clicked"].to_numpy()
    assert 0.3 < is_tail.mean() < 0.5  # every word new to captions and default queries
    assert clicked[is_tail].mean() < 0.2 < clicked[~is_tail].mean()
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--tail-query-share", "2"]) == 2
    assert "--tail-query-share must be in [0, 1]" in capsys.readouterr().err


def test_latent_generator_is_deterministic_and_ranks_by_words(tmp_path: Path) -> None:
    first, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_latent_synth(first, "tiny", 0)
    run_latent_synth(again, "tiny", 0)
    run_latent_synth(other, "tiny", 1)
    for spec in ALL_FILES:
        assert (again / spec.name).read_bytes() == (first / spec.name).read_bytes()
    assert (other / REC_INTER.name).read_bytes() != (first / REC_INTER.name).read_bytes()
    manifest = json.loads((first / "synth_manifest.json").read_text())
    assert manifest["generator"] == "queryrec.data.synth_latent"
    assert "caption_sharpness" in manifest["story"]
    # The engine is lexical: shown items share a query word with their caption (popular
    # items only fill pages with too few matches), and clicks favour the top of the page.
    src = _text(first, SRC_INTER.name).with_row_index("row")
    items = _text(first, ITEM_FEATURES.name)
    caption_of = dict(zip(items["item_id"], items["caption"], strict=True))
    src = src.with_columns(
        pl.col("row").rank("ordinal").over(["user_id", "search_session_id"]).alias("pos"),
        pl.col("row").count().over(["user_id", "search_session_id"]).alias("n"),
    )
    overlap = np.array(
        [
            len(set(parse_token_list(k)) & set(parse_token_list(caption_of.get(i, "[]"))))
            for k, i in zip(src["keyword"], src["item_id"], strict=True)
        ]
    )
    top = (src["pos"] == 1).to_numpy()
    last = ((src["pos"] == src["n"]) & (src["n"] > 1)).to_numpy()
    assert (overlap[top] > 0).mean() > 0.95 and (overlap > 0).mean() > 0.8
    click = src["click_cnt"].cast(pl.Int8).to_numpy()
    assert click[top].mean() > 2 * click[last].mean()


def test_synth_cli_generator_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["data", "synth", "--preset", "tiny", "--generator"]
    assert main([*base, "latent", "--out", str(tmp_path / "l")]) == 0
    assert "rec_inter.csv" in capsys.readouterr().out
    assert main([*base, "bogus", "--out", str(tmp_path / "b")]) == 2
    assert "unknown --generator 'bogus'" in capsys.readouterr().err
    assert main([*base, "latent", "--tail-query-share", "0.3", "--out", str(tmp_path / "t")]) == 2
    assert "topics generator only" in capsys.readouterr().err
    # The reader and prepare take the latent generator's files unchanged.
    assert (
        main(["data", "prepare", "--raw", str(tmp_path / "l"), "--out", str(tmp_path / "d")]) == 0
    )
