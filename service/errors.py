"""Errors of the serving side (torch-free; shares the offline package's error root)."""

from __future__ import annotations

from queryrec.errors import BundleError, QueryRecError

__all__ = [
    "BundleError",
    "EmbeddedRedisError",
    "Overloaded",
    "QueryRecError",
    "Rejected",
    "SearchNotFound",
    "SettingsError",
    "StateUnavailable",
]


class EmbeddedRedisError(QueryRecError):
    """The embedded redis-server could not be found, started, or answered no PING."""


class SettingsError(QueryRecError):
    """A service setting (QUERYREC_* variable or flag) is missing or invalid."""


class StateUnavailable(QueryRecError):
    """Redis did not answer or refused a command; writes are not acknowledged."""


class SearchNotFound(QueryRecError):
    """Search clicks name a search the user's query history does not hold (never recorded,
    expired, or no longer among the newest L); nothing was stored. The message goes to
    the caller: it names the user and the timestamp, never hosts or exception text."""


class Overloaded(QueryRecError):
    """A micro-batcher cannot take a request: it is stopped, or busy beyond the request's
    deadline (Score degrades), or its queue is full (`QueueFull`)."""


class QueueFull(Overloaded):
    """A micro-batcher's queue holds `max_queue` requests: the service is overloaded
    (RESOURCE_EXHAUSTED: the caller backs off or goes elsewhere)."""


class Rejected(QueryRecError):
    """A call answered with an error status; `kind` maps to gRPC and HTTP codes
    (service/transport/calls.py): invalid, not_found, overloaded, deadline, unavailable, internal.
    The message goes to the caller: it names the field or the state, never hosts or
    exception text."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
