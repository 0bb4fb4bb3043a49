"""`queryrec serve`: run the gRPC server (and its admin API) until SIGTERM / SIGINT.

One process (`QUERYREC_WORKERS=1`): `serve` below. More (the default: one per CPU core):
a supervisor runs that many of them on one port (`service.workers`), each one `serve`
with hooks that report to the supervisor instead of printing the listening line.

SIGTERM / SIGINT: graceful drain (`ScoringServer.drain`), then exit 0. SIGHUP: reload
the bundle from its folder (a new export written there, or a symlink switched).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

from service.logs import configure_logging, event, serving_line
from service.model_holder import ReloadRefused
from service.server import ScoringServer, create_server
from service.settings import ServiceSettings


class ServeHooks(Protocol):
    """Told where a server is in its start (a worker tells its supervisor)."""

    def listening(self, server: ScoringServer) -> None:
        """Bound, admin API up, signal handlers installed; warming up."""

    def ready(self, server: ScoringServer) -> None:
        """Warmed up and SERVING."""


def serve_forever(settings: ServiceSettings) -> int:
    """Serve until SIGTERM / SIGINT; -> the exit code (0: a clean shutdown).

    QueryRecError (a bad setting or bundle, Redis unreachable) propagates: one line."""
    configure_logging()
    from service.workers import supervise, worker_count  # imports this module

    count = worker_count(settings)
    if count > 1:
        return supervise(settings, count)
    asyncio.run(serve(settings))
    return 0


async def serve(
    settings: ServiceSettings, hooks: ServeHooks | None = None, *, reuse_port: bool = False
) -> None:
    """One server process from start to drained. Without `hooks` it prints the one line
    a supervisor (or `queryrec demo`) waits for once it serves; `reuse_port` binds with
    SO_REUSEPORT (a worker of `serve --workers N`)."""
    server = await create_server(settings, reuse_port=reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    async def reload_from_folder() -> None:
        try:
            await server.reload()
        except ReloadRefused as refused:  # another reload runs, or the drain began
            event("reload_refused", logging.WARNING, error=str(refused))

    def reload_on_hangup() -> None:
        event("reload_requested", signal="SIGHUP")
        task = loop.create_task(reload_from_folder())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_on_hangup)
    try:
        await server.listen()
        if hooks is not None:
            hooks.listening(server)
        await server.warm_up_and_serve()
        if hooks is not None:
            hooks.ready(server)
        else:
            # One line a supervisor (or `queryrec demo`) can wait for (JSON, on stdout).
            admin = f", admin on port {server.admin.port}" if server.admin is not None else ""
            redis = "embedded" if server.embedded_redis else "external"
            serving_line(
                f"queryrec serve: listening on {settings.host}:{server.port} "
                f"(model {server.scorer.model_version}, redis {redis}{admin})",
                host=settings.host,
                port=server.port,
                admin_port=server.admin.port if server.admin is not None else None,
                model_version=server.scorer.model_version,
                redis=redis,
                workers=1,
            )
        await stop.wait()
        await server.drain()
    finally:
        await server.stop()
