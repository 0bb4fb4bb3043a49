"""`queryrec serve`: run the gRPC server (and its admin API) until SIGTERM / SIGINT.

One process (`QUERYREC_WORKERS=1`): `process.serve`. More (the default: one per CPU of the container's quota):
a supervisor runs that many of them on one port (`service.transport.workers`), each one `process.serve`
with hooks that report to the supervisor instead of printing the listening line.

SIGTERM / SIGINT: graceful drain (`ScoringServer.drain`), then exit 0. SIGHUP: reload
the bundle from its folder (a new export written there, or a symlink switched).
"""

from __future__ import annotations

import asyncio

from service.logs import configure_logging
from service.settings import ServiceSettings
from service.transport.process import serve
from service.transport.workers import supervise, worker_count


def serve_forever(settings: ServiceSettings) -> int:
    """Serve until SIGTERM / SIGINT; -> the exit code (0: a clean shutdown).

    QueryRecError (a bad setting or bundle, Redis unreachable) propagates: one line."""
    configure_logging()
    count = worker_count(settings)
    if count > 1:
        return supervise(settings, count)
    asyncio.run(serve(settings))
    return 0
