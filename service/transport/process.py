"""One server process from start to drained: bind, warm up, serve until SIGTERM / SIGINT,
drain, stop; SIGHUP reloads the bundle from its folder. `queryrec serve` runs it once
(`run.serve_forever`); a supervisor runs it in each worker (`workers`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

from service.inference.model_holder import ReloadRefused
from service.logs import event, serving_line
from service.settings import ServiceSettings
from service.transport.server import ScoringServer, create_server


class ServeHooks(Protocol):
    """Told where a server is in its start (a worker tells its supervisor)."""

    def listening(self, server: ScoringServer) -> None:
        """Bound, admin API up, signal handlers installed; warming up."""

    def ready(self, server: ScoringServer) -> None:
        """Warmed up: SERVING, or (`held`) waiting for `ScoringServer.release`."""


async def serve(
    settings: ServiceSettings,
    hooks: ServeHooks | None = None,
    *,
    reuse_port: bool = False,
    held: bool = False,
) -> None:
    """One server process from start to drained. Without `hooks` it prints the one line
    a supervisor (or `queryrec demo`) waits for once it serves; `reuse_port` binds with
    SO_REUSEPORT and `held` keeps health NOT_SERVING after the warm-up until
    `server.release()` (both: a worker of `serve --workers N`)."""
    server = await create_server(settings, reuse_port=reuse_port)
    server.held = held
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
