"""`queryrec state load`: every user's histories and profile as of a time, bulk-written to Redis.

Reads a prepared dataset (torch-free), keeps the events strictly before `as_of` (default:
the start of the test split, so that a replay of the test split continues from there),
caps them like the server does (the newest L queries, H clicks, and with each query its
search's clicked results, distinct, in display order, at most `max_search_clicks`), maps
model indices back to raw ids (Redis holds raw ids, `service.state.keys`) and writes
users in pipelined chunks of `chunk` users: per user DEL + RPUSH (newest first) + EXPIRE
for both lists and HSET for the profile. Existing keys of a loaded user are replaced.

A Redis Cluster URL (`redis+cluster://host:port[,host:port...]`, `service.state.urls`)
loads through redis-py's cluster client: each chunk's pipeline is split by node (a user's
keys share one slot, so the per-user DEL of three keys stays one command).

The AUTH password comes from the URL or, winning over it, the `password` argument (the CLI
passes `default_redis_password()`: QUERYREC_REDIS_PASSWORD, else the first line of the
file QUERYREC_REDIS_PASSWORD_FILE, like the service). Error messages name the URL with
its password redacted and never the password itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import redis
import redis.cluster
from redis.exceptions import RedisClusterException, RedisError

from queryrec.features.dataset import PreparedDataset
from queryrec.progress import bar as progress_bar
from service.errors import SettingsError, StateUnavailable
from service.state import keys
from service.state.urls import is_cluster_url, parse_cluster_url, parse_single_url, redacted_url

UNMAPPED_RAW_ID = 1 << 62
"""Stands for an item or word index without a raw id (as in `queryrec replay`)."""


@dataclass(frozen=True)
class LoadReport:
    users: int
    queries: int
    clicks: int
    seconds: float
    search_clicks: int = 0  # clicked results stored with the loaded queries

    @property
    def users_per_minute(self) -> float:
        return self.users / max(self.seconds, 1e-9) * 60


def load_state(
    dataset: PreparedDataset,
    url: str,
    *,
    as_of_ms: int | None = None,
    query_cap: int = 20,
    click_cap: int = 50,
    max_search_clicks: int = 16,
    ttl_s: int = 30 * 24 * 3600,
    chunk: int = 2000,
    progress: bool = True,
    password: str | None = None,
) -> LoadReport:
    """Write every user with any history or profile; -> counts and timing.

    max_search_clicks: clicked results kept per search (the service's setting of that
        name; the first ones in display order).
    password: AUTH password, wins over one in `url` (None or "": the URL's, if any).
    """
    start = time.perf_counter()
    as_of = int(dataset.schema["split"]["test_start_ms"]) if as_of_ms is None else as_of_ms
    user_raw, item_raw, word_raw = (dataset.raw_ids(n) for n in ("users", "items", "words"))
    # An index without a raw id (-1) is stored as one no map holds (the service maps it to
    # unknown again): a negative id would read as the search-clicks separator.
    item_raw, word_raw = (np.where(t < 0, UNMAPPED_RAW_ID, t) for t in (item_raw, word_raw))
    profiles = pl.read_parquet(dataset.root / "features/users.parquet")
    fields = list(dataset.schema["vocab_sizes"]["profile"])
    with_features = profiles.filter(pl.col("has_features"))
    profile_codes = {
        int(i): {f: int(with_features[f][row]) for f in fields}
        for row, i in enumerate(with_features["index"].to_list())
    }
    where = redacted_url(url)
    client = _client(url, where, password)

    def failure(what: str, error: BaseException) -> StateUnavailable:
        """The CLI's message: the redacted URL and the error, the password masked."""
        text = f"{what} (Redis at {where}): {type(error).__name__}: {error}"
        return StateUnavailable(text.replace(password, "***") if password else text)

    with client:  # closed on every path
        try:
            client.ping()
        except (RedisError, RedisClusterException, OSError) as error:
            raise failure("Redis does not answer", error) from None

        packed_clicks = _pack_all_clicks(dataset, item_raw)
        users = np.arange(2, len(dataset.search_user_start) - 1)  # 0, 1: padding, unknown
        n_queries = n_clicks = n_search_clicks = 0
        bar = progress_bar(total=len(users), desc="state load", unit="user", enabled=progress)
        for lo in range(0, len(users), chunk):
            pipe = client.pipeline(transaction=False)
            for user in users[lo : lo + chunk]:
                raw_user = int(user_raw[user])
                if raw_user < 0:
                    continue
                q_entries, searched = _query_entries(
                    dataset, int(user), as_of, query_cap, word_raw, item_raw, max_search_clicks
                )
                c_entries = _click_entries(dataset, int(user), as_of, click_cap, packed_clicks)
                qk, ck, pk = (
                    keys.query_key(raw_user),
                    keys.click_key(raw_user),
                    keys.profile_key(raw_user),
                )
                # One DEL of the three keys (one slot); raw, as redis-py's cluster pipeline
                # refuses `delete` of several keys even when they share a slot.
                pipe.execute_command("DEL", qk, ck, pk)
                if q_entries:
                    pipe.rpush(qk, *q_entries)
                    pipe.expire(qk, ttl_s)
                if c_entries:
                    pipe.rpush(ck, *c_entries)
                    pipe.expire(ck, ttl_s)
                if int(user) in profile_codes:
                    pipe.hset(pk, mapping=profile_codes[int(user)])
                    pipe.expire(pk, ttl_s)
                n_queries += len(q_entries)
                n_clicks += len(c_entries)
                n_search_clicks += searched
            try:
                pipe.execute()
            except (RedisError, RedisClusterException, OSError) as error:
                raise failure("Redis write failed during state load", error) from None
            bar.update(min(chunk, len(users) - lo))
        bar.close()
    return LoadReport(len(users), n_queries, n_clicks, time.perf_counter() - start, n_search_clicks)


def _client(url: str, where: str, password: str | None) -> redis.Redis | redis.cluster.RedisCluster:
    """The blocking client of `url`: single-node, or redis-py's cluster client for a
    cluster URL. The password as an argument, never inside a URL string (which may end
    up in a message), winning over the URL's."""
    if is_cluster_url(url):
        nodes, options = parse_cluster_url(url, where)
        options.setdefault("socket_timeout", 30)
        if password:
            options["password"] = password
        return redis.cluster.RedisCluster(
            startup_nodes=[
                redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in nodes
            ],
            **options,
        )
    # Set after parsing, so that it wins over the URL's (`from_url` lets the URL's
    # options win over its keyword arguments).
    parse_single_url(url, where)  # a malformed URL: one line (SettingsError), no traceback
    pool = redis.ConnectionPool.from_url(url, socket_timeout=30)
    if password:
        pool.connection_kwargs["password"] = password
    return redis.Redis.from_pool(pool)


def _query_entries(
    dataset: PreparedDataset,
    user: int,
    as_of: int,
    cap: int,
    word_raw: np.ndarray,
    item_raw: np.ndarray,
    click_cap: int,
) -> tuple[list[bytes], int]:
    """The user's newest `cap` queries before `as_of`, newest first, packed with their
    searches' clicked results; -> (entries, clicked results packed)."""
    lo, hi = dataset.search_user_start[user], dataset.search_user_start[user + 1]
    end = lo + int(np.searchsorted(dataset.search_ts[lo:hi], as_of, side="left"))
    entries = []
    clicked_total = 0
    for session in range(end - 1, max(lo, end - cap) - 1, -1):
        a, b = dataset.query_offsets[session], dataset.query_offsets[session + 1]
        c, d = dataset.clicked_offsets[session], dataset.clicked_offsets[session + 1]
        clicked = _first_distinct(item_raw[dataset.clicked_items[c:d]], click_cap)
        clicked_total += len(clicked)
        entries.append(
            keys.pack_query(
                int(dataset.search_ts[session]), word_raw[dataset.query_words[a:b]], clicked
            )
        )
    return entries, clicked_total


def _first_distinct(items: np.ndarray, most: int) -> np.ndarray:
    """The first `most` distinct values of `items`, in their order (what the service's
    search-clicks script keeps when the items are recorded in this order)."""
    if len(items) <= 1:
        return items[:most]
    _, first = np.unique(items, return_index=True)
    return items[np.sort(first)][:most]


def _click_entries(
    dataset: PreparedDataset, user: int, as_of: int, cap: int, packed: bytes
) -> list[bytes]:
    """The user's newest `cap` feed clicks before `as_of`, newest first: 16-byte slices
    of `packed`, every click of the dataset packed once (`_pack_all_clicks`)."""
    lo, hi = dataset.click_user_start[user], dataset.click_user_start[user + 1]
    end = lo + int(np.searchsorted(dataset.click_ts[lo:hi], as_of, side="left"))
    return [packed[i * 16 : i * 16 + 16] for i in range(end - 1, max(lo, end - cap) - 1, -1)]


def _pack_all_clicks(dataset: PreparedDataset, item_raw: np.ndarray) -> bytes:
    """Every click as a little-endian int64 [ts, raw item] pair, in timeline order."""
    pairs = np.stack([dataset.click_ts, item_raw[dataset.click_item]], axis=1)
    return pairs.astype("<i8").tobytes()


def parse_time(value: str) -> int:
    """Epoch ms, or an ISO date-time (UTC unless it names a zone) -> epoch ms."""
    from datetime import UTC, datetime

    if value.lstrip("-").isdigit():
        return int(value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--as-of {value!r} is neither epoch ms nor an ISO date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def default_redis_url(given: str | None) -> str:
    """`given`, else QUERYREC_REDIS_URL; StateUnavailable when neither is set."""
    import os

    url = given or os.environ.get("QUERYREC_REDIS_URL")
    if not url:
        raise StateUnavailable("no Redis URL: pass --redis URL or set QUERYREC_REDIS_URL")
    return url


def default_redis_password() -> str | None:
    """The AUTH password as the service reads it: QUERYREC_REDIS_PASSWORD, else the first
    line of the file named by QUERYREC_REDIS_PASSWORD_FILE; None when neither is set
    (then a password in the URL, if any, is used). Kept off the command line on purpose."""
    import os
    from pathlib import Path

    value = os.environ.get("QUERYREC_REDIS_PASSWORD")
    if value:
        return value
    name = os.environ.get("QUERYREC_REDIS_PASSWORD_FILE")
    if not name:
        return None
    try:
        lines = Path(name).read_text().splitlines()
    except OSError as error:
        raise SettingsError(
            f"QUERYREC_REDIS_PASSWORD_FILE {name}: cannot read it ({error.strerror})"
        ) from None
    if not lines or not lines[0].strip():
        raise SettingsError(f"QUERYREC_REDIS_PASSWORD_FILE {name}: the first line is empty")
    return lines[0].strip()
