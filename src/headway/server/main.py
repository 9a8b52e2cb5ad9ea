"""`headway server`: run the ASGI app under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from headway.server.app import create_app
from headway.server.settings import ServerSettings


def run_server(settings: ServerSettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        ws_per_message_deflate=False,  # ~47 KiB less per agent; messages are small
        backlog=16384,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
