"""Errors of the serving side (torch-free; shares the offline package's error root)."""

from __future__ import annotations

from queryrec.errors import BundleError, QueryRecError

__all__ = [
    "BundleError",
    "EmbeddedRedisError",
    "Overloaded",
    "SettingsError",
    "StateUnavailable",
]


class EmbeddedRedisError(QueryRecError):
    """The embedded redis-server could not be found, started, or answered no PING."""


class SettingsError(QueryRecError):
    """A service setting (QUERYREC_* variable or flag) is missing or invalid."""


class StateUnavailable(QueryRecError):
    """Redis did not answer or refused a command; writes are not acknowledged."""


class Overloaded(QueryRecError):
    """A micro-batcher's queue is full (RESOURCE_EXHAUSTED)."""
