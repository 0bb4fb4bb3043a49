"""The one place that names Redis keys and packs their values (DESIGN.md "Redis keys").

| key | type | content |
|---|---|---|
| `qr:{<user_id>}:q` | list, newest first, capped at L | one query per entry: little-endian int64 [timestamp_ms, raw token id, ...] |
| `qr:{<user_id>}:c` | list, newest first, capped at H | one click per entry: little-endian int64 [timestamp_ms, raw item id] |
| `qr:{<user_id>}:p` | hash | profile field name -> code (as in the bundle's features/users.parquet) |
| `qr:{<user_id>}:e:<model_version>` | string | 16-byte history version + the query vector as float32 |

`<user_id>` is the raw id the API receives, inside a hash tag so that one user's keys
share a cluster slot. Histories hold raw ids, not model indices: they outlive a bundle,
and each bundle maps them with its own id maps when it reads them. The history version
of a cached vector is a digest of everything the encoder input depends on (the query
entries used and their age buckets at the request time), so a changed history or an
older age bucket misses the cache.
"""

from __future__ import annotations

import numpy as np

PREFIX = "qr"
_INT64 = np.dtype("<i8")
_FLOAT32 = np.dtype("<f4")
VERSION_BYTES = 16


def query_key(user_id: int) -> str:
    return f"{PREFIX}:{{{user_id}}}:q"


def click_key(user_id: int) -> str:
    return f"{PREFIX}:{{{user_id}}}:c"


def profile_key(user_id: int) -> str:
    return f"{PREFIX}:{{{user_id}}}:p"


def query_repr_key(user_id: int, model_version: str) -> str:
    return f"{PREFIX}:{{{user_id}}}:e:{model_version}"


def pack_query(timestamp_ms: int, token_ids: np.ndarray | list[int]) -> bytes:
    """One query-history entry: int64 [ts, tokens...]."""
    tokens = np.asarray(token_ids, dtype=_INT64)
    return np.concatenate([np.array([timestamp_ms], dtype=_INT64), tokens]).tobytes()


def unpack_query(entry: bytes) -> tuple[int, np.ndarray]:
    """-> (timestamp_ms, raw token ids (n,) int64)."""
    values = np.frombuffer(entry, dtype=_INT64)
    return int(values[0]), values[1:]


def unpack_queries(entries: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries (newest first) -> (timestamps (m,), word counts (m,), the raw token ids of
    every entry one after the other (sum of counts,)), newest first; one decode for all."""
    if not entries:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    values = np.frombuffer(b"".join(entries), dtype=_INT64)
    sizes = np.array(list(map(len, entries)), dtype=np.int64) // 8 - 1
    heads = np.cumsum(sizes + 1) - sizes - 1  # where each entry's timestamp is
    is_word = np.ones(len(values), dtype=bool)
    is_word[heads] = False
    return values[heads], sizes, values[is_word]


def pack_clicks(timestamp_ms: int, item_ids: np.ndarray | list[int]) -> list[bytes]:
    """One entry per clicked item: int64 [ts, item]."""
    items = np.asarray(item_ids, dtype=_INT64)
    pairs = np.stack([np.full(len(items), timestamp_ms, dtype=_INT64), items], axis=1)
    return [row.tobytes() for row in pairs]


def unpack_clicks(entries: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Entries (newest first) -> (timestamps (n,), raw item ids (n,)), newest first."""
    if not entries:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    values = np.frombuffer(b"".join(entries), dtype=_INT64).reshape(-1, 2)
    return values[:, 0], values[:, 1]


def pack_query_repr(version: bytes, vector: np.ndarray) -> bytes:
    return version + np.asarray(vector, dtype=_FLOAT32).tobytes()


def unpack_query_repr(value: bytes) -> tuple[bytes, np.ndarray]:
    """-> (history version, vector (d,) float32)."""
    return value[:VERSION_BYTES], np.frombuffer(value[VERSION_BYTES:], dtype=_FLOAT32)
