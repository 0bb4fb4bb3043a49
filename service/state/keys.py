"""The one place that names Redis keys and packs their values (DESIGN.md "Redis keys").

| key | type | content |
|---|---|---|
| `qr:{<user_id>}:q` | list, newest first, capped at L | one search per entry: little-endian int64 [timestamp_ms, raw token id, ..., -1, raw clicked item id, ...]; the separator -1 and the clicked items only once clicks were recorded for the search |
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

A query entry holds its search's clicked results ("search clicks") after its words:
`[timestamp_ms, token..., SEARCH_CLICKS_MARK (-1), item...]`. Token and item ids are never
negative (the API refuses negative ids, `pack_query` too), so the first -1 after the
timestamp is the separator; an entry without one has no clicks (every entry written
before search clicks existed reads that way). Clicked items are distinct, in the order
they were recorded, at most `cap` (the service's `max_search_clicks`) per search.

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
  "now" differs between tries);
- a stored query entry that has gained search clicks since still matches its retry: an
  entry of E matches a stored entry equal to it or equal to it followed by the 8 bytes
  of SEARCH_CLICKS_MARK (what follows is that search's clicks), so a RecordQuery retried
  after its clicks were recorded is not stored a second time.

Search clicks are recorded into their search's entry (one Lua script, `SEARCH_CLICKS_SCRIPT`)
------------------------------------------------------------------------------------------
The call names its search by the search's timestamp_ms (the one RecordQuery stored) and
the rule is:

    Among the entries of the list (all of them: it holds at most L), the NEWEST whose
    first 8 bytes equal the timestamp is the search. None: return -1 and change nothing.
    Else the call's items that the entry does not hold yet are appended after its clicks
    (after a new separator when it had none), in call order, a repeated item once, until
    the entry holds `cap` clicks; the entry is written back in place (LSET), the EXPIRE
    refreshed, and the number of clicks the search now holds returned.

So the write is a set union in recording order: a retry (or any call repeating stored
items) stores nothing twice and answers the same count; a later call adds only its new
items; once the cap is reached further items are dropped (the first `cap` recorded
stay). Two searches in one millisecond: the newest gets the clicks. The script runs
atomically, so nothing partial is ever stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PREFIX = "qr"
_INT64 = np.dtype("<i8")
_FLOAT32 = np.dtype("<f4")
VERSION_BYTES = 16

SEARCH_CLICKS_MARK = -1
"""Separates a query entry's words from its search's clicked items (module docstring)."""

DEDUP_WINDOW = 8
"""Entries newer than a call's own that may lie between a write and its retry and still
let the retry be recognised (module docstring, "Appends are idempotent")."""

APPEND_SCRIPT = """
-- KEYS[1]: the list; ARGV: cap, ttl_s, window, then the call's entries in LPUSH
-- argument order (the last one becomes the newest). The rule: service/state/keys.py.
local key = KEYS[1]
local cap = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local mark = '\\255\\255\\255\\255\\255\\255\\255\\255'
local last = #ARGV
local n = math.min(last - 3, cap)
local head = redis.call('LRANGE', key, 0, n + window - 1)
for offset = 0, #head - n do
  local same = true
  for i = 1, n do
    local stored, entry = head[offset + i], ARGV[last - i + 1]
    if stored ~= entry
      and not (#stored > #entry and string.sub(stored, 1, #entry + 8) == entry .. mark) then
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


SEARCH_CLICKS_SCRIPT = """
-- KEYS[1]: the query list; ARGV: the search's timestamp (its 8 little-endian bytes), cap
-- (clicks per search), ttl_s, then the clicked items (8 bytes each). -> the clicks the
-- search holds now, or -1 (nothing changed) when no entry has that timestamp. The rule:
-- service/state/keys.py.
local key = KEYS[1]
local stamp = ARGV[1]
local cap = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local mark = '\\255\\255\\255\\255\\255\\255\\255\\255'
local entries = redis.call('LRANGE', key, 0, -1)
for index = 1, #entries do
  local entry = entries[index]
  if string.sub(entry, 1, 8) == stamp then
    local words = #entry / 8
    local cut = nil
    for word = 2, words do
      if string.sub(entry, word * 8 - 7, word * 8) == mark then
        cut = word
        break
      end
    end
    local held = {}
    local count = 0
    if cut ~= nil then
      for word = cut + 1, words do
        held[string.sub(entry, word * 8 - 7, word * 8)] = true
        count = count + 1
      end
    end
    local added = {}
    for i = 4, #ARGV do
      if count >= cap then
        break
      end
      local item = ARGV[i]
      if not held[item] then
        held[item] = true
        count = count + 1
        added[#added + 1] = item
      end
    end
    if #added > 0 then
      if cut == nil then
        entry = entry .. mark
      end
      redis.call('LSET', key, index - 1, entry .. table.concat(added))
    end
    redis.call('EXPIRE', key, ttl)
    return count
  end
end
return -1
"""
"""Records a search's clicked results into its query entry (module docstring, "Search
clicks are recorded into their search's entry"): one EVALSHA per call, atomic in Redis;
the newest entry with the timestamp wins (LRANGE is newest first)."""


def search_clicks_args(
    search_timestamp_ms: int, item_ids: list[int], cap: int, ttl_s: int
) -> list[int | bytes]:
    """ARGV of `SEARCH_CLICKS_SCRIPT`: the timestamp's 8 bytes (Lua 5.1 has no int64, so
    the script compares bytes), cap, TTL, then each item's 8 bytes."""
    items = np.asarray(item_ids, dtype=_INT64)
    stamp = np.array([search_timestamp_ms], dtype=_INT64).tobytes()
    return [stamp, cap, ttl_s, *(items[i : i + 1].tobytes() for i in range(len(items)))]


def query_key(user_id: int) -> str:
    return f"{PREFIX}:{{{user_id}}}:q"


def click_key(user_id: int) -> str:
    return f"{PREFIX}:{{{user_id}}}:c"


def profile_key(user_id: int) -> str:
    return f"{PREFIX}:{{{user_id}}}:p"


def query_repr_key(user_id: int, cache_version: str) -> str:
    return f"{PREFIX}:{{{user_id}}}:e:{cache_version}"


def pack_query(
    timestamp_ms: int,
    token_ids: np.ndarray | Sequence[int],
    clicked: np.ndarray | Sequence[int] = (),
) -> bytes:
    """One query-history entry: int64 [ts, tokens...], or [ts, tokens..., -1, clicked...]
    when the search has clicked items (distinct, in recording order: the caller's job).
    ValueError on a negative token or item id (it would read as the separator)."""
    tokens = np.asarray(token_ids, dtype=_INT64)
    items = np.asarray(clicked, dtype=_INT64)
    if (len(tokens) and tokens.min() < 0) or (len(items) and items.min() < 0):
        raise ValueError("query entries hold no negative token or item ids")
    parts = [np.array([timestamp_ms], dtype=_INT64), tokens]
    if len(items):
        parts += [np.array([SEARCH_CLICKS_MARK], dtype=_INT64), items]
    return np.concatenate(parts).tobytes()


def unpack_query(entry: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    """-> (timestamp_ms, raw token ids (n,) int64, raw clicked item ids (k,) int64)."""
    values = np.frombuffer(entry, dtype=_INT64)
    marks = np.flatnonzero(values[1:] == SEARCH_CLICKS_MARK)
    if not len(marks):
        return int(values[0]), values[1:], values[:0]
    cut = int(marks[0]) + 1
    return int(values[0]), values[1:cut], values[cut + 1 :]


def unpack_queries(
    entries: list[bytes],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entries (newest first) -> (timestamps (m,), word counts (m,), the raw token ids of
    every entry one after the other (sum of word counts,), click counts (m,), the raw
    clicked item ids of every entry one after the other (sum of click counts,)), newest
    first; one decode for all (and no more work than before when no entry has clicks)."""
    if not entries:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    values = np.frombuffer(b"".join(entries), dtype=_INT64)
    lengths = np.fromiter(map(len, entries), dtype=np.int64, count=len(entries)) // 8
    heads = np.cumsum(lengths) - lengths  # where each entry's timestamp is
    body = np.ones(len(values), dtype=bool)
    body[heads] = False
    marks = np.flatnonzero((values == SEARCH_CLICKS_MARK) & body)
    if not len(marks):  # no entry has clicks
        no_clicks = np.zeros(len(entries), dtype=np.int64)
        return values[heads], lengths - 1, values[body], no_clicks, values[:0]
    # One separator per entry with clicks: the entry it lies in, and its position there.
    ends = heads + lengths
    cuts = ends.copy()  # without clicks: the words run to the end
    cuts[np.searchsorted(heads, marks, side="right") - 1] = marks
    word_sizes = cuts - heads - 1
    click_sizes = np.maximum(ends - cuts - 1, 0)
    positions = np.arange(len(values))
    cut_of = np.repeat(cuts, lengths)
    is_word = body & (positions < cut_of)
    is_click = positions > cut_of
    return values[heads], word_sizes, values[is_word], click_sizes, values[is_click]


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
