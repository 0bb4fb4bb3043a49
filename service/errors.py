"""Errors of the serving side (torch-free; shares the offline package's error root)."""

from __future__ import annotations

from queryrec.errors import QueryRecError


class BundleError(QueryRecError):
    """A model bundle is missing a file, was altered, or has a format this code cannot read."""
