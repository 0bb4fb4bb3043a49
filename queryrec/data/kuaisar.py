"""The KuaiSAR file format (Sun et al., CIKM 2023), as released in `KuaiSAR_final/`.

One place that names the five CSV files, their header order as released, and which
columns the project reads. The reader matches columns by header name (order is
informative only); the generator writes exactly these headers in this order.
See `shared/docs/KUAISAR.md` for the meaning of every column.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# Beijing time has no daylight saving: a fixed UTC+8 offset converts both ways. Defined
# with the time features that use it; re-exported for the readers and the generator.
from queryrec.features.time_features import BEIJING_OFFSET_MS as BEIJING_OFFSET_MS


class ColumnKind(Enum):
    """How a column's text is parsed and validated."""

    ID = "id"  # integer id; integral floats such as "12.0" are accepted
    MILLIS = "millis"  # Unix milliseconds; floats and "1.684742e+12" are accepted
    FLAG = "flag"  # 0/1 (any count > 0 reads as 1)
    CATEGORY = "category"  # small integer or string code, kept as text
    TOKENS = "tokens"  # a JSON list of integer word hashes, e.g. "[20, 34, 3]"
    TEXT = "text"  # free text, kept as is


@dataclass(frozen=True)
class Column:
    """A column the project reads: how to parse it and whether an empty cell is allowed.

    An empty cell in a nullable ID column reads as 0, KuaiSAR's "missing" value
    (author_id 0, category id 0); in a nullable TOKENS column as an empty list.
    """

    kind: ColumnKind
    nullable: bool = False


@dataclass(frozen=True)
class FileSpec:
    """One KuaiSAR CSV: its released header and the columns the project reads."""

    name: str
    header: tuple[str, ...]
    required: dict[str, Column]
    optional: dict[str, Column]
    must_have_rows: bool = True

    @property
    def columns(self) -> dict[str, Column]:
        return {**self.required, **self.optional}


REC_INTER = FileSpec(
    name="rec_inter.csv",
    header=(
        "user_id",
        "item_id",
        "duration_ms",
        "playing_time",
        "timestamp",
        "forward",
        "like",
        "follow",
        "search_item_related",
        "search",
        "click",
        "time",
    ),
    required={
        "user_id": Column(ColumnKind.ID),
        "item_id": Column(ColumnKind.ID),
        "timestamp": Column(ColumnKind.MILLIS),
        "click": Column(ColumnKind.FLAG),
    },
    optional={},
)

SRC_INTER = FileSpec(
    name="src_inter.csv",
    header=(
        "keyword",
        "item_id",
        "click_cnt",
        "search_session_id",
        "item_type",
        "user_id",
        "search_session_timestamp",
        "search_source",
        "search_session_time",
    ),
    required={
        "user_id": Column(ColumnKind.ID),
        "search_session_id": Column(ColumnKind.ID),
        "search_session_timestamp": Column(ColumnKind.MILLIS),
        "keyword": Column(ColumnKind.TOKENS),
        "item_id": Column(ColumnKind.ID),
        "click_cnt": Column(ColumnKind.FLAG),
    },
    optional={
        "item_type": Column(ColumnKind.CATEGORY, nullable=True),
        "search_source": Column(ColumnKind.CATEGORY, nullable=True),
    },
)

USER_PROFILE_FIELDS = ("search_active_level", "rec_active_level", "onehot_feat1", "onehot_feat2")

USER_FEATURES = FileSpec(
    name="user_features.csv",
    header=("user_id", *USER_PROFILE_FIELDS),
    required={
        "user_id": Column(ColumnKind.ID),
        # An empty profile cell is a missing value (index 0), not an error.
        **{f: Column(ColumnKind.CATEGORY, nullable=True) for f in USER_PROFILE_FIELDS},
    },
    optional={},
)

CATEGORY_LEVELS = ("first", "second", "third", "fourth")


def _category_columns() -> tuple[str, ...]:
    cols: list[str] = []
    for level in CATEGORY_LEVELS:
        cols += [
            f"{level}_level_category_id",
            f"{level}_level_category_name",
            f"{level}_level_category_name_en",
        ]
    return tuple(cols)


ITEM_FEATURES = FileSpec(
    name="item_features.csv",
    header=(
        "item_id",
        "caption",
        "author_id",
        "item_type",
        "upload_time",
        "upload_type",
        "music_id",
        *_category_columns(),
    ),
    required={
        "item_id": Column(ColumnKind.ID),
        "caption": Column(ColumnKind.TOKENS, nullable=True),
        "author_id": Column(ColumnKind.ID, nullable=True),
        **{
            f"{level}_level_category_id": Column(ColumnKind.ID, nullable=True)
            for level in CATEGORY_LEVELS
        },
    },
    optional={
        "item_type": Column(ColumnKind.CATEGORY, nullable=True),
        **{
            f"{level}_level_category_name": Column(ColumnKind.TEXT, nullable=True)
            for level in CATEGORY_LEVELS
        },
    },
)

SOCIAL_NETWORK = FileSpec(
    name="social_network.csv",
    header=("user_id", "user_follow_id"),
    required={"user_id": Column(ColumnKind.ID), "user_follow_id": Column(ColumnKind.ID)},
    optional={},
    must_have_rows=False,
)

ALL_FILES = (REC_INTER, SRC_INTER, USER_FEATURES, ITEM_FEATURES, SOCIAL_NETWORK)
# social_network.csv is not used by any feature; prepare reads it when present.
REQUIRED_FILES = (REC_INTER, SRC_INTER, USER_FEATURES, ITEM_FEATURES)

# Search-only item types: the feed serves only VIDEO and IMAGE_ATLAS.
FEED_ITEM_TYPES = ("VIDEO", "IMAGE_ATLAS")
SEARCH_ONLY_ITEM_TYPES = ("USER", "LIVE", "COMMODITY", "MUSIC", "ADVERT")
