"""`queryrec serve`: run the gRPC server (and its admin API) until SIGTERM / SIGINT.

SIGTERM / SIGINT: graceful drain (`ScoringServer.drain`), then exit 0. SIGHUP: reload
the bundle from its folder (a new export written there, or a symlink switched).
"""

from __future__ import annotations

import asyncio
import signal

from service.logs import configure_logging, event
from service.server import create_server
from service.settings import ServiceSettings


def serve_forever(settings: ServiceSettings) -> None:
    configure_logging()
    asyncio.run(_serve(settings))


async def _serve(settings: ServiceSettings) -> None:
    server = await create_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[object]] = set()

    def reload_on_hangup() -> None:
        event("reload_requested", signal="SIGHUP")
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_on_hangup)
    try:
        await server.start()
        # One line a supervisor (or `queryrec demo`) can wait for.
        admin = f", admin on port {server.admin.port}" if server.admin is not None else ""
        print(
            f"queryrec serve: listening on {settings.host}:{server.port} "
            f"(model {server.scorer.model_version}, redis "
            f"{'embedded' if server.embedded_redis else 'external'}{admin})",
            flush=True,
        )
        await stop.wait()
        await server.drain()
    finally:
        await server.stop()
