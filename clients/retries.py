"""Retries of the repository's own gRPC clients: gRPC's own retry policy, not a loop.

The service answers UNAVAILABLE when Redis did not confirm a write in its budget or
while it drains, and every write is idempotent (a retried entry is dropped by the
server's append script, `service.state.keys`), so a client retries UNAVAILABLE with
backoff. `RETRY_OPTIONS` is the channel option that tells gRPC core to do it for every
method of `queryrec.v1.Scorer`.
"""

from __future__ import annotations

import json

RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
"""Up to 3 retries, 50 ms then doubling (gRPC adds jitter), on UNAVAILABLE only."""

RETRY_OPTIONS: list[tuple[str, str | int]] = [
    ("grpc.enable_retries", 1),
    (
        "grpc.service_config",
        json.dumps(
            {
                "methodConfig": [
                    {"name": [{"service": "queryrec.v1.Scorer"}], "retryPolicy": RETRY_POLICY}
                ]
            }
        ),
    ),
]
