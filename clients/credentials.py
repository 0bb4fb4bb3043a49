"""The API token of the repository's own gRPC clients (replay, Locust users, benchmarks).

A server with `QUERYREC_API_TOKEN` (or `QUERYREC_API_TOKEN_FILE`) answers every call but
health UNAUTHENTICATED unless it carries the metadata `authorization: Bearer <token>`
(`service.transport.auth`). The clients read the same variables from their environment, so one
exported variable serves both sides; with neither set they send nothing, which is what
a server on loopback without a token expects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from queryrec.errors import QueryRecError

TOKEN_VARIABLE = "QUERYREC_API_TOKEN"
TOKEN_FILE_VARIABLE = "QUERYREC_API_TOKEN_FILE"

Metadata = tuple[tuple[str, str], ...]


def api_metadata(environ: Mapping[str, str] | None = None) -> Metadata:
    """The call metadata to send: `(("authorization", "Bearer <token>"),)` when the
    environment names a token (the variable, else the first line of the file), else ()."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    token = env.get(TOKEN_VARIABLE, "").strip()
    if not token and env.get(TOKEN_FILE_VARIABLE):
        path = Path(env[TOKEN_FILE_VARIABLE])
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise QueryRecError(f"{TOKEN_FILE_VARIABLE} {path}: {error.strerror}") from None
        token = lines[0].strip() if lines else ""
    return (("authorization", f"Bearer {token}"),) if token else ()
