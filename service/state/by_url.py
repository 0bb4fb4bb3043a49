"""`open_state`: the state store a Redis URL names.

Its own module because it is the one place that knows both implementations: the stores
import `service.state.store` (the interface and what they share), and the interface
importing them back would be a circle.
"""

from __future__ import annotations

from service.state.cluster import ClusterState
from service.state.outage import RedisEvents
from service.state.single_node import RedisState
from service.state.store import HistoryCaps, StateStore
from service.state.urls import is_cluster_url


def open_state(
    url: str,
    caps: HistoryCaps,
    *,
    password: str | None = None,
    timeout_s: float = 2.0,
    pool_size: int = 64,
    reconnect_max_s: float = 2.0,
    events: RedisEvents | None = None,
) -> StateStore:
    """A `ClusterState` for `redis+cluster://` / `rediss+cluster://`, else a single-node
    `RedisState` (`redis://`, `rediss://`, `unix://`); connects lazily (call `ping` to
    check at start). The arguments are the stores' (`RedisState.__init__`); SettingsError
    (password redacted) for a URL redis-py refuses."""
    store = ClusterState if is_cluster_url(url) else RedisState
    return store(
        url,
        caps,
        password=password,
        timeout_s=timeout_s,
        pool_size=pool_size,
        reconnect_max_s=reconnect_max_s,
        events=events,
    )
