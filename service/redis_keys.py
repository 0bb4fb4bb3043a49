"""The one place that names Redis keys and packs their values (DESIGN.md "Redis keys").

| key | type | content |
|---|---|---|
| `qr:{<user_id>}:q` | list, newest first, capped at L | one query per entry: little-endian int64 [timestamp_ms, raw token id, ...] |
| `qr:{<user_id>}:c` | list, newest first, capped at H | one click per entry: little-endian int64 [timestamp_ms, raw item id] |
| `qr:{<user_id>}:p` | hash | profile field name -> code (as in the bundle's features/users.parquet) |
| `qr:{<user_id>}:e:<cache_version>` | string | 16-byte history version + the query vector as float32 |

`<user_id>` is the raw id the API receives, inside a hash tag so that one user's keys
share a cluster slot. Histories hold raw ids, not model indices: they outlive a bundle,
and each bundle maps them with its own id maps when it reads them. The history version
of a cached vector is a digest of everything the encoder input depends on (the query
entries used and their age buckets at the request time), so a changed history or an
older age bucket misses the cache. `<cache_version>` is the version string the cache is
keyed by (the encoder's version): a new encoder never reads an older one's vectors.

Appends are idempotent (one Lua script, `APPEND_SCRIPT`, run atomically by Redis)
--------------------------------------------------------------------------------------
A write can time out on the client yet be stored (the command reached Redis; the reply
did not reach the caller in time), and the caller then retries it. So the rule is:

    A call's entries E (1 query entry, or the n click entries of one RecordClicks, in
    the order LPUSH leaves them, newest first) are not appended again when they already
    appear as one contiguous run among the newest len(E) + DEDUP_WINDOW entries of the
    list. Then only the EXPIRE is refreshed and the current length returned. Otherwise:
    LPUSH + LTRIM(cap) + EXPIRE, and the new length returned.

When a call holds more entries than the cap, E is its newest `cap` entries (only those
survive the LTRIM, so only those can be found again). Consequences:
- a retry of a stored call stores nothing and answers the same length as if the first
  try had answered (unless other writes came in between);
- up to DEDUP_WINDOW other entries written between the try and its retry (other
  devices, other calls) still let the retry be recognised;
- identical entries inside ONE call (the same item clicked twice at the same ms in one
  RecordClicks) are stored as given, but two separate identical calls are one entry:
  the timestamp is part of every entry, so two real events differ unless they share
  their millisecond and content. A retry is recognised only when it carries the same
  timestamp_ms, so a client that retries must send the timestamp itself (a server-filled
  "now" differs between tries).
"""

from __future__ import annotations

import numpy as np

PREFIX = "qr"
_INT64 = np.dtype("<i8")
_FLOAT32 = np.dtype("<f4")
VERSION_BYTES = 16

DEDUP_WINDOW = 8
"""Entries newer than a call's own that may lie between a write and its retry and still
let the retry be recognised (module docstring, "Appends are idempotent")."""

APPEND_SCRIPT = """
-- KEYS[1]: the list; ARGV: cap, ttl_s, window, then the call's entries in LPUSH
-- argument order (the last one becomes the newest). The rule: service/redis_keys.py.
local key = KEYS[1]
local cap = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local last = #ARGV
local n = math.min(last - 3, cap)
local head = redis.call('LRANGE', key, 0, n + window - 1)
for offset = 0, #head - n do
  local same = true
  for i = 1, n do
    if head[offset + i] ~= ARGV[last - i + 1] then
      same = false
      break
    end
  end
  if same then
    redis.call('EXPIRE', key, ttl)
    return redis.call('LLEN', key)
  end
end
local first = last - n + 1
while first <= last do
  local upto = math.min(first + 999, last)
  redis.call('LPUSH', key, unpack(ARGV, first, upto))
  first = upto + 1
end
redis.call('LTRIM', key, 0, cap - 1)
redis.call('EXPIRE', key, ttl)
return redis.call('LLEN', key)
"""
"""The idempotent append (module docstring): one EVALSHA per write, atomic in Redis. Only
the newest `cap` entries of a call are pushed: the LTRIM would drop the others anyway.
LPUSH goes in chunks of 1000 values, below Lua's limit on unpacked arguments."""


def append_args(entries: list[bytes], cap: int, ttl_s: int) -> list[int | bytes]:
    """ARGV of `APPEND_SCRIPT` for `entries` in LPUSH argument order (last = newest)."""
    return [cap, ttl_s, DEDUP_WINDOW, *entries]


def query_key(user_id: int) -> str:
    return f"{PREFIX}:{{{user_id}}}:q"


def click_key(user_id: int) -> str:
    return f"{PREFIX}:{{{user_id}}}:c"


def profile_key(user_id: int) -> str:
    return f"{PREFIX}:{{{user_id}}}:p"


def query_repr_key(user_id: int, cache_version: str) -> str:
    return f"{PREFIX}:{{{user_id}}}:e:{cache_version}"


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
