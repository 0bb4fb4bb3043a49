"""`queryrec data prepare`: turn KuaiSAR CSVs (real or synthetic) into the project's dataset.

Output folder (`DATA_DIR`), all parquet unless noted; "index" means a dense id:

| file | one row per | columns |
|---|---|---|
| `maps/{users,items,words,authors}.parquet` | raw id | `raw_id`, `index` |
| `maps/categories.parquet` | (level, raw id) | `level` 1-4, `raw_id`, `index`, `name`, `name_en` |
| `features/items.parquet` | item index (row i = index i) | `author`, `category_1..4`, `item_type`, `caption` (word indices), `has_features` |
| `features/users.parquet` | user index (row i = index i) | one code per profile field, `has_features` |
| `timelines/feed.parquet` | feed impression, by (user, time, file order) | `user`, `item`, `ts`, `click` |
| `timelines/search.parquet` | search session, by (user, time, session id) | `user`, `ts`, `session_id`, `query`, `shown`, `clicked`, `source` |
| `samples/{train,valid,test}.parquet` | feed impression, by time | `user`, `item`, `label`, `ts`, `feed_pos`, `click_end`, `search_end`, `user_seen_in_train`, `item_seen_in_train` |
| `schema.json` | | vocabulary sizes, max lengths, split, field codes, file hashes, content hash |
| `stats.json`, `STATS.md` | | the statistics report |

Index conventions: 0 = padding / missing value (author 0 and category 0 of KuaiSAR, an
empty profile cell), 1 = unknown (an id the maps lack; an item with no item_features row
gets 1 for its side features). Real ids get 2, 3, ... in ascending raw-id order. Maps cover
every id that occurs anywhere in the logs (the catalogue is known at serving time; what
is unknown is interaction history); `user_seen_in_train` / `item_seen_in_train` mark
samples whose user or item has no event before the validation cut.

Histories are never copied per sample. A sample carries pointers into the timelines:
`click_end` is an exclusive end into the click timeline (the rows of feed.parquet with
click = 1, in file order) and `search_end` an exclusive end into search.parquet; both
count only events **strictly before** the sample's timestamp, so a feed batch (items
served with one timestamp) never sees its own clicks. `feed_pos` is the sample's row in
feed.parquet (for "what comes after t", e.g. L_next). `queryrec.features.dataset` slices
the histories on demand.

Split (documented cut points): samples are ordered by time; the validation cut is the
timestamp at the (1 - valid_fraction - test_fraction) quantile of feed impressions and the
test cut the one at the (1 - test_fraction) quantile (defaults 0.8 and 0.9). train:
ts < valid_start; valid: valid_start <= ts < test_start; test: ts >= test_start. Ties at a
cut fall on one side, so the splits are disjoint in time. Search sessions are labelled
with the same cuts. The cut points are recorded in schema.json and STATS.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from queryrec import __version__
from queryrec.data.kuaisar import (
    BEIJING_OFFSET_MS,
    CATEGORY_LEVELS,
    ITEM_FEATURES,
    REC_INTER,
    SOCIAL_NETWORK,
    SRC_INTER,
    USER_FEATURES,
    USER_PROFILE_FIELDS,
)
from queryrec.data.reader import locate_raw_dir, read_table
from queryrec.errors import DataFormatError, QueryRecError
from queryrec.features.schema import FIRST_INDEX, PADDING_INDEX, UNKNOWN_INDEX, write_schema
from queryrec.outputs import atomic_output_dir
from queryrec.progress import step

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class PrepareConfig:
    """Split fractions and the history lengths the models will use (recorded in the schema)."""

    valid_fraction: float = 0.1  # share of feed impressions (by time) in validation
    test_fraction: float = 0.1  # share of feed impressions (by time) in test
    max_click_history: int = 50  # feed clicks a model looks back at (DIN)
    max_query_history: int = 20  # search queries the SAS encoder looks back at
    max_query_tokens: int = 8  # words kept per query
    max_caption_tokens: int = 16  # words kept per item caption
    # Low-data regime (issue 17's L_next curve): keep this share of the *training-period*
    # feed impressions (a seeded draw per row); the dropped ones vanish everywhere (labels,
    # click histories, L_next targets), validation, test and all search data are kept.
    train_feed_fraction: float = 1.0
    train_feed_seed: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.valid_fraction < 1 and 0 < self.test_fraction < 1):
            raise QueryRecError("valid and test fractions must be in (0, 1)")
        if self.valid_fraction + self.test_fraction >= 1:
            raise QueryRecError("valid + test fractions must leave some training data")
        if not 0 < self.train_feed_fraction <= 1:
            raise QueryRecError(
                f"--train-feed-fraction must be in (0, 1], not {self.train_feed_fraction}"
            )


def run_prepare(
    raw_dir: Path, out_dir: Path, config: PrepareConfig | None = None, *, force: bool = False
) -> str:
    """Read `raw_dir`, write the dataset to `out_dir` atomically; return the STATS.md text."""
    config = config or PrepareConfig()
    raw_dir = locate_raw_dir(Path(raw_dir))
    tables: dict[str, pl.DataFrame] = {}
    for spec in (REC_INTER, SRC_INTER, USER_FEATURES, ITEM_FEATURES, SOCIAL_NETWORK):
        if spec is SOCIAL_NETWORK and not (raw_dir / spec.name).exists():
            continue
        with step("prepare", f"reading {spec.name}"):
            tables[spec.name] = read_table(raw_dir, spec)
    with atomic_output_dir(Path(out_dir), force=force) as tmp:
        builder = _DatasetBuilder(raw_dir, tables, config)
        with step("prepare", "split cut points"):
            builder.choose_split()
        if config.train_feed_fraction < 1:
            with step("prepare", f"keeping {config.train_feed_fraction:.0%} of training feed rows"):
                builder.thin_training_feed()
        with step("prepare", "id maps"):
            builder.build_maps()
        with step("prepare", "item and user features"):
            builder.build_features()
        with step("prepare", "feed and search timelines"):
            builder.build_timelines()
        with step("prepare", "samples and history pointers"):
            builder.build_samples()
        with step("prepare", "writing dataset, schema and statistics"):
            report = builder.write(tmp)
    return report


def _beijing(ms: int) -> str:
    """Unix ms -> 'YYYY-MM-DD HH:MM:SS' Beijing time."""
    return str(
        np.datetime64(int(ms) + BEIJING_OFFSET_MS, "ms").astype("datetime64[s]").astype(str)
    ).replace("T", " ")


def _dense_map(raw_ids: pl.Series) -> pl.DataFrame:
    """raw_id -> index (2, 3, ... in ascending raw-id order) for the distinct non-null ids."""
    unique = raw_ids.drop_nulls().unique().sort()
    return pl.DataFrame(
        {
            "raw_id": unique,
            "index": pl.int_range(
                FIRST_INDEX, FIRST_INDEX + len(unique), dtype=pl.Int32, eager=True
            ),
        }
    )


def _code_map(values: pl.Series) -> dict[str, int]:
    """Small categorical field: value -> code (2, 3, ...), sorted for determinism."""
    distinct = sorted(str(v) for v in values.drop_nulls().unique().to_list())
    return {value: FIRST_INDEX + i for i, value in enumerate(distinct)}


def _apply_codes(column: str, codes: dict[str, int]) -> pl.Expr:
    return (
        pl.col(column)
        .cast(pl.String)
        .replace_strict(codes, default=PADDING_INDEX, return_dtype=pl.Int16)
        .alias(column)
    )


def _map_tokens(frame: pl.DataFrame, column: str, words: pl.DataFrame) -> pl.Series:
    """Replace raw word hashes in a list column by word indices, keeping order and row order."""
    rows = frame.select(column).with_row_index("_row")
    exploded = (
        rows.explode(column)
        .with_row_index("_pos")
        .join(words, left_on=column, right_on="raw_id", how="left", maintain_order="left")
    )
    regrouped = exploded.group_by("_row").agg(pl.col("index").sort_by("_pos").drop_nulls())
    mapped = rows.select("_row").join(regrouped, on="_row", how="left", maintain_order="left")
    return (
        mapped["index"]
        .fill_null(pl.lit([], pl.List(pl.Int32)))
        .cast(pl.List(pl.Int32))
        .alias(column)
    )


class _DatasetBuilder:
    """Holds the raw tables and the derived ones while prepare runs, in pipeline order."""

    def __init__(self, raw_dir: Path, tables: dict[str, pl.DataFrame], config: PrepareConfig):
        self.raw_dir = raw_dir
        self.cfg = config
        self.rec = tables[REC_INTER.name]
        self.src = tables[SRC_INTER.name]
        self.users_raw = tables[USER_FEATURES.name].unique(
            "user_id", keep="first", maintain_order=True
        )
        self.items_raw = tables[ITEM_FEATURES.name].unique(
            "item_id", keep="first", maintain_order=True
        )
        self.social = tables.get(SOCIAL_NETWORK.name)
        self.row_counts = {name: table.height for name, table in tables.items()}

    # ------------------------------------------------------------------ split
    def choose_split(self) -> None:
        ts = self.rec["timestamp"]
        distinct = np.unique(ts.to_numpy())
        t_min, t_max = int(distinct[0]), int(distinct[-1])
        train_q = 1.0 - self.cfg.valid_fraction - self.cfg.test_fraction
        valid_q = 1.0 - self.cfg.test_fraction
        valid_start = int(ts.quantile(train_q, interpolation="lower") or 0)
        test_start = int(ts.quantile(valid_q, interpolation="lower") or 0)
        # Heavily tied timestamps can put both quantiles on one value, or the first cut on
        # the first timestamp: move a cut to the next distinct timestamp then.
        if valid_start == t_min and len(distinct) > 1:
            valid_start = int(distinct[1])
        if test_start <= valid_start:
            later = distinct[distinct > valid_start]
            test_start = int(later[0]) if len(later) else valid_start
        if not (t_min < valid_start < test_start):
            raise DataFormatError(
                self.raw_dir / REC_INTER.name,
                "timestamps are too few or too tied to cut train / valid / test by time "
                f"(min {t_min}, cuts {valid_start} and {test_start})",
                column="timestamp",
            )
        self.valid_start, self.test_start = valid_start, test_start
        self.t_min, self.t_max = t_min, t_max

    def thin_training_feed(self) -> None:
        """Keep `train_feed_fraction` of the feed rows before the validation cut (uniform,
        seeded); the cut points stay those of the full log, so valid and test are unchanged."""
        rng = np.random.default_rng(self.cfg.train_feed_seed)
        keep = rng.random(self.rec.height) < self.cfg.train_feed_fraction
        in_train = (self.rec["timestamp"] < self.valid_start).to_numpy()
        self.rec = self.rec.filter(pl.Series(~in_train | keep))

    def _split_code(self, ts: pl.Expr) -> pl.Expr:
        return (
            pl.when(ts < self.valid_start)
            .then(pl.lit(0, pl.Int8))
            .when(ts < self.test_start)
            .then(pl.lit(1, pl.Int8))
            .otherwise(pl.lit(2, pl.Int8))
        )

    # ------------------------------------------------------------------ maps
    def build_maps(self) -> None:
        self.user_map = _dense_map(
            pl.concat([self.users_raw["user_id"], self.rec["user_id"], self.src["user_id"]])
        )
        self.item_map = _dense_map(pl.concat([self.rec["item_id"], self.src["item_id"]]))
        item_rows = self.items_raw.join(
            self.item_map, left_on="item_id", right_on="raw_id", how="semi"
        )
        self.items_known = item_rows
        self.word_map = _dense_map(
            pl.concat([self.src["keyword"].explode(), item_rows["caption"].explode()]).alias("word")
        )
        self.author_map = _dense_map(item_rows.filter(pl.col("author_id") != 0)["author_id"])
        category_maps = []
        for level_number, level in enumerate(CATEGORY_LEVELS, start=1):
            id_col, name_col = f"{level}_level_category_id", f"{level}_level_category_name"
            names = item_rows.select(
                pl.col(id_col).alias("raw_id"),
                (
                    pl.col(name_col) if name_col in item_rows.columns else pl.lit(None, pl.String)
                ).alias("name"),
            ).filter(pl.col("raw_id") != 0)
            level_map = _dense_map(names["raw_id"]).join(
                names.unique("raw_id", keep="first"), on="raw_id", how="left"
            )
            category_maps.append(
                level_map.with_columns(pl.lit(level_number, pl.Int8).alias("level"))
            )
        self.category_map = pl.concat(category_maps).select("level", "raw_id", "index", "name")
        self.item_type_codes = _code_map(
            item_rows["item_type"]
            if "item_type" in item_rows.columns
            else pl.Series([], dtype=pl.String)
        )
        self.source_codes = _code_map(
            self.src["search_source"]
            if "search_source" in self.src.columns
            else pl.Series([], dtype=pl.String)
        )
        self.profile_codes = {f: _code_map(self.users_raw[f]) for f in USER_PROFILE_FIELDS}

    # ------------------------------------------------------------------ features
    def build_features(self) -> None:
        n_items = FIRST_INDEX + self.item_map.height
        rows = self.items_known.join(
            self.item_map, left_on="item_id", right_on="raw_id", how="inner"
        )
        rows = rows.with_columns(
            _map_tokens(rows, "caption", self.word_map),
            pl.when(pl.col("author_id") == 0)
            .then(pl.lit(PADDING_INDEX, pl.Int32))
            .otherwise(
                pl.col("author_id").replace_strict(
                    self.author_map["raw_id"],
                    self.author_map["index"],
                    default=UNKNOWN_INDEX,
                    return_dtype=pl.Int32,
                )
            )
            .alias("author"),
        )
        columns: dict[str, pl.Expr] = {}
        for level_number, level in enumerate(CATEGORY_LEVELS, start=1):
            level_map = self.category_map.filter(pl.col("level") == level_number)
            id_col = f"{level}_level_category_id"
            columns[f"category_{level_number}"] = (
                pl.when(pl.col(id_col) == 0)
                .then(pl.lit(PADDING_INDEX, pl.Int32))
                .otherwise(
                    pl.col(id_col).replace_strict(
                        level_map["raw_id"],
                        level_map["index"],
                        default=UNKNOWN_INDEX,
                        return_dtype=pl.Int32,
                    )
                )
            )
        if "item_type" in rows.columns:
            columns["item_type"] = _apply_codes("item_type", self.item_type_codes)
        else:
            columns["item_type"] = pl.lit(PADDING_INDEX, pl.Int16)
        rows = rows.with_columns(**columns)
        feature_cols = ["author", *[f"category_{i}" for i in range(1, 5)], "item_type", "caption"]
        full = (
            pl.DataFrame({"index": pl.int_range(0, n_items, dtype=pl.Int32, eager=True)})
            .join(
                rows.select("index", *feature_cols).with_columns(
                    pl.lit(True).alias("has_features")
                ),
                on="index",
                how="left",
            )
            .sort("index")
        )
        self.item_features = full.with_columns(
            *[pl.col(c).fill_null(UNKNOWN_INDEX) for c in feature_cols if c != "caption"],
            pl.col("caption").fill_null(pl.lit([], pl.List(pl.Int32))),
            pl.col("has_features").fill_null(False),
        ).with_columns(
            # Padding and unknown rows: all zeros / unknown, no caption.
            pl.when(pl.col("index") < FIRST_INDEX)
            .then(False)
            .otherwise(pl.col("has_features"))
            .alias("has_features")
        )
        self.items_without_features = int((~self.item_features["has_features"]).sum() - FIRST_INDEX)

        n_users = FIRST_INDEX + self.user_map.height
        profile = self.users_raw.join(self.user_map, left_on="user_id", right_on="raw_id").select(
            "index", *[_apply_codes(f, self.profile_codes[f]) for f in USER_PROFILE_FIELDS]
        )
        self.user_features = (
            pl.DataFrame({"index": pl.int_range(0, n_users, dtype=pl.Int32, eager=True)})
            .join(profile.with_columns(pl.lit(True).alias("has_features")), on="index", how="left")
            .sort("index")
            .with_columns(
                *[pl.col(f).fill_null(UNKNOWN_INDEX) for f in USER_PROFILE_FIELDS],
                pl.col("has_features").fill_null(False),
            )
        )

    # ------------------------------------------------------------------ timelines
    def _user_item_index(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.join(
            self.user_map.rename({"index": "user"}),
            left_on="user_id",
            right_on="raw_id",
            how="left",
            maintain_order="left",
        ).join(
            self.item_map.rename({"index": "item"}),
            left_on="item_id",
            right_on="raw_id",
            how="left",
            maintain_order="left",
        )

    def build_timelines(self) -> None:
        feed = self._user_item_index(self.rec.select("user_id", "item_id", "timestamp", "click"))
        self.feed = feed.select(
            pl.col("user").cast(pl.Int32),
            pl.col("item").cast(pl.Int32),
            pl.col("timestamp").alias("ts"),
            pl.col("click").cast(pl.Int8),
        ).sort(["user", "ts"], maintain_order=True)
        src = self._user_item_index(self.src).with_row_index("_row")
        if "search_source" not in src.columns:
            src = src.with_columns(pl.lit(None, pl.String).alias("search_source"))
        sessions = src.group_by(["user", "search_session_id"]).agg(
            pl.col("search_session_timestamp").min().alias("ts"),
            pl.col("search_session_timestamp").n_unique().alias("_n_ts"),
            pl.col("keyword").sort_by("_row").first().alias("keyword"),
            pl.col("keyword").n_unique().alias("_n_keywords"),
            pl.col("item").sort_by("_row").alias("shown"),
            pl.col("item")
            .sort_by("_row")
            .filter(pl.col("click_cnt").sort_by("_row") > 0)
            .alias("clicked"),
            pl.col("search_source").sort_by("_row").first().alias("search_source"),
        )
        self.inconsistent_sessions = int(
            sessions.filter((pl.col("_n_ts") > 1) | (pl.col("_n_keywords") > 1)).height
        )
        sessions = sessions.sort(["user", "ts", "search_session_id"])
        sessions = sessions.with_columns(
            _map_tokens(sessions, "keyword", self.word_map).alias("query"),
            _apply_codes("search_source", self.source_codes).alias("source"),
        )
        self.search = sessions.select(
            pl.col("user").cast(pl.Int32),
            "ts",
            pl.col("search_session_id").alias("session_id"),
            "query",
            pl.col("shown").cast(pl.List(pl.Int32)),
            pl.col("clicked").cast(pl.List(pl.Int32)),
            "source",
        )

    # ------------------------------------------------------------------ samples
    def build_samples(self) -> None:
        user = self.feed["user"].to_numpy()
        ts = self.feed["ts"].to_numpy()
        click = self.feed["click"].to_numpy()
        n = len(user)
        # click_end: clicks of earlier rows, counted up to the first row of this row's
        # (user, timestamp) group, so that a feed batch never sees its own clicks.
        new_group = np.ones(n, dtype=bool)
        new_group[1:] = (user[1:] != user[:-1]) | (ts[1:] != ts[:-1])
        group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
        clicks_before = np.concatenate([[0], np.cumsum(click, dtype=np.int64)])
        click_end = clicks_before[group_start]
        # search_end: sessions of earlier users, plus this user's sessions with ts < t.
        t_lo = min(self.t_min, int(self.search["ts"].min() or self.t_min))  # type: ignore[arg-type]
        t_hi = max(self.t_max, int(self.search["ts"].max() or self.t_max))  # type: ignore[arg-type]
        span = t_hi - t_lo + 1
        n_users = FIRST_INDEX + self.user_map.height
        if n_users * span >= 2**62:
            raise QueryRecError("time span times user count too large for 64-bit history keys")
        session_key = self.search["user"].to_numpy().astype(np.int64) * span + (
            self.search["ts"].to_numpy() - t_lo
        )
        sample_key = user.astype(np.int64) * span + (ts - t_lo)
        search_end = np.searchsorted(session_key, sample_key, side="left")

        train_items = pl.concat(
            [
                self.feed.filter(pl.col("ts") < self.valid_start)["item"],
                self.search.filter(pl.col("ts") < self.valid_start)["shown"].explode(),
            ]
        ).unique()
        train_users = self.feed.filter(pl.col("ts") < self.valid_start)["user"].unique()
        samples = self.feed.with_columns(
            pl.col("click").alias("label"),
            pl.int_range(0, n, dtype=pl.Int64).alias("feed_pos"),
            pl.Series("click_end", click_end, dtype=pl.Int64),
            pl.Series("search_end", search_end, dtype=pl.Int64),
            self._split_code(pl.col("ts")).alias("split"),
            pl.col("user").is_in(train_users.implode()).alias("user_seen_in_train"),
            pl.col("item").is_in(train_items.implode()).alias("item_seen_in_train"),
        ).drop("click")
        self.samples = {
            name: samples.filter(pl.col("split") == code)
            .drop("split")
            .sort(["ts", "user", "feed_pos"])
            for code, name in enumerate(SPLITS)
        }

    # ------------------------------------------------------------------ writing
    def write(self, out: Path) -> str:
        files: list[str] = []

        def put(frame: pl.DataFrame, name: str) -> None:
            path = out / name
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(path, compression="zstd", statistics=False)
            files.append(name)

        put(self.user_map, "maps/users.parquet")
        put(self.item_map, "maps/items.parquet")
        put(self.word_map, "maps/words.parquet")
        put(self.author_map, "maps/authors.parquet")
        put(self.category_map, "maps/categories.parquet")
        put(self.item_features, "features/items.parquet")
        put(self.user_features, "features/users.parquet")
        put(self.feed, "timelines/feed.parquet")
        put(self.search, "timelines/search.parquet")
        for name, frame in self.samples.items():
            put(frame, f"samples/{name}.parquet")

        stats = self.statistics()
        schema = write_schema(out, self.schema_body(files, stats))
        stats["content_hash"] = schema["content_hash"]
        (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        report = render_stats(stats)
        (out / "STATS.md").write_text(report)
        return report

    def schema_body(self, files: list[str], stats: dict[str, Any]) -> dict[str, Any]:
        categories = [
            FIRST_INDEX + self.category_map.filter(pl.col("level") == i).height for i in range(1, 5)
        ]
        return {
            "created_by": f"queryrec {__version__}",
            "source": {"raw_dir": str(self.raw_dir), "rows": self.row_counts},
            "special_indices": {"padding": PADDING_INDEX, "unknown": UNKNOWN_INDEX},
            "vocab_sizes": {
                "users": FIRST_INDEX + self.user_map.height,
                "items": FIRST_INDEX + self.item_map.height,
                "words": FIRST_INDEX + self.word_map.height,
                "authors": FIRST_INDEX + self.author_map.height,
                "categories": categories,
                "item_types": FIRST_INDEX + len(self.item_type_codes),
                "search_sources": FIRST_INDEX + len(self.source_codes),
                "profile": {f: FIRST_INDEX + len(c) for f, c in self.profile_codes.items()},
            },
            "codes": {
                "item_type": self.item_type_codes,
                "search_source": self.source_codes,
                "profile": self.profile_codes,
            },
            "max_lengths": {
                "click_history": self.cfg.max_click_history,
                "query_history": self.cfg.max_query_history,
                "query_tokens": self.cfg.max_query_tokens,
                "caption_tokens": self.cfg.max_caption_tokens,
            },
            "split": stats["split"],
            "config": asdict(self.cfg),
            "files": files,
        }

    def statistics(self) -> dict[str, Any]:
        search = self.search.with_columns(
            self._split_code(pl.col("ts")).alias("split"),
            (pl.col("clicked").list.len() > 0).alias("has_click"),
        )
        per_split: dict[str, Any] = {}
        for code, name in enumerate(SPLITS):
            s = self.samples[name]
            ss = search.filter(pl.col("split") == code)
            per_split[name] = {
                "feed_rows": s.height,
                "users": s["user"].n_unique(),
                "items": s["item"].n_unique(),
                "click_rate": float(s["label"].mean() or 0.0),  # type: ignore[arg-type]
                "search_sessions": ss.height,
                "search_sessions_with_click": int(ss["has_click"].sum()),
                "search_sessions_without_click": int((~ss["has_click"]).sum()),
                "samples_user_unseen_in_train": int((~s["user_seen_in_train"]).sum()),
                "samples_item_unseen_in_train": int((~s["item_seen_in_train"]).sum()),
                "users_unseen_in_train": s.filter(~pl.col("user_seen_in_train"))["user"].n_unique(),
                "items_unseen_in_train": s.filter(~pl.col("item_seen_in_train"))["item"].n_unique(),
                "samples_with_query_history": self._with_history(s),
                "time_from": _beijing(int(s["ts"].min() or 0)) if s.height else None,  # type: ignore[arg-type]
                "time_to": _beijing(int(s["ts"].max() or 0)) if s.height else None,  # type: ignore[arg-type]
            }
        query_len = self.search["query"].list.len()
        n_sessions = self.search.height
        with_click = int(search["has_click"].sum())
        return {
            "raw_dir": str(self.raw_dir),
            "rows": self.row_counts,
            "users": self.user_map.height,
            "items": self.item_map.height,
            "words": self.word_map.height,
            "authors": self.author_map.height,
            "items_without_features": self.items_without_features,
            "feed_rows": self.feed.height,
            "feed_click_rate": float(self.feed["click"].mean() or 0.0),  # type: ignore[arg-type]
            "search_sessions": n_sessions,
            "search_sessions_with_click": with_click,
            "search_sessions_without_click": n_sessions - with_click,
            "search_sessions_inconsistent": self.inconsistent_sessions,
            "mean_shown_per_session": float(self.search["shown"].list.len().mean() or 0.0),  # type: ignore[arg-type]
            "mean_query_tokens": float(query_len.mean() or 0.0),  # type: ignore[arg-type]
            "queries_longer_than_max_tokens": int((query_len > self.cfg.max_query_tokens).sum()),
            "follow_edges": self.social.height if self.social is not None else None,
            "split": {
                "method": "time",
                "valid_fraction": self.cfg.valid_fraction,
                "test_fraction": self.cfg.test_fraction,
                "valid_start_ms": self.valid_start,
                "test_start_ms": self.test_start,
                "valid_start": _beijing(self.valid_start),
                "test_start": _beijing(self.test_start),
                "first_event": _beijing(self.t_min),
                "last_event": _beijing(self.t_max),
                "rule": "train: ts < valid_start; valid: valid_start <= ts < test_start; test: ts >= test_start",
            },
            "per_split": per_split,
        }

    def _with_history(self, samples: pl.DataFrame) -> int:
        """Samples whose user searched at least once before the sample's time."""
        if samples.height == 0:
            return 0
        users = samples["user"].to_numpy()
        user_of_previous = np.full(len(users), -1, dtype=np.int64)
        ends = samples["search_end"].to_numpy()
        has_previous = ends > 0
        search_users = self.search["user"].to_numpy()
        user_of_previous[has_previous] = search_users[ends[has_previous] - 1]
        return int((user_of_previous == users).sum())


def render_stats(stats: dict[str, Any]) -> str:
    """The statistics report as Markdown (also printed by `queryrec data prepare`)."""
    split = stats["split"]
    lines = [
        "# Dataset statistics",
        "",
        f"Source: `{stats['raw_dir']}`",
        "",
        "| | count |",
        "|---|---|",
        *[f"| {name} rows | {count:,} |" for name, count in stats["rows"].items()],
        f"| users | {stats['users']:,} |",
        f"| items (in the logs) | {stats['items']:,} |",
        f"| items without an item_features row | {stats['items_without_features']:,} |",
        f"| words | {stats['words']:,} |",
        f"| authors | {stats['authors']:,} |",
        f"| feed click rate | {stats['feed_click_rate']:.3f} |",
        f"| search sessions | {stats['search_sessions']:,} |",
        f"| sessions with a click | {stats['search_sessions_with_click']:,} "
        f"({stats['search_sessions_with_click'] / max(stats['search_sessions'], 1):.1%}) |",
        f"| sessions without a click | {stats['search_sessions_without_click']:,} "
        f"({stats['search_sessions_without_click'] / max(stats['search_sessions'], 1):.1%}) |",
        f"| mean items shown per session | {stats['mean_shown_per_session']:.2f} |",
        f"| mean words per query | {stats['mean_query_tokens']:.2f} |",
        "",
        f"Split by time: valid from {split['valid_start']} ({split['valid_start_ms']} ms), "
        f"test from {split['test_start']} ({split['test_start_ms']} ms), Beijing time; "
        f"events from {split['first_event']} to {split['last_event']}.",
        "",
        "| split | feed rows | users | click rate | search sessions | without click | "
        "samples w/ query history | users unseen in train | items unseen in train | from | to |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in stats["per_split"].items():
        sessions = s["search_sessions"]
        lines.append(
            f"| {name} | {s['feed_rows']:,} | {s['users']:,} | {s['click_rate']:.3f} | {sessions:,} | "
            f"{s['search_sessions_without_click'] / max(sessions, 1):.1%} | "
            f"{s['samples_with_query_history'] / max(s['feed_rows'], 1):.1%} | "
            f"{s['users_unseen_in_train']:,} | {s['items_unseen_in_train']:,} | "
            f"{s['time_from']} | {s['time_to']} |"
        )
    return "\n".join(lines) + "\n"
