"""`queryrec serve`: run the gRPC server until SIGINT / SIGTERM, then stop gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal

from service.server import create_server
from service.settings import ServiceSettings


def serve_forever(settings: ServiceSettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_serve(settings))


async def _serve(settings: ServiceSettings) -> None:
    server = await create_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        # One line a supervisor (or `queryrec demo`) can wait for.
        print(
            f"queryrec serve: listening on {settings.host}:{server.port} "
            f"(model {server.scorer.model_version}, redis "
            f"{'embedded' if server.embedded_redis else 'external'})",
            flush=True,
        )
        await stop.wait()
    finally:
        await server.stop()
