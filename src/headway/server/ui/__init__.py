"""Headway's web UI: server-rendered pages under ``/ui``, live over server-sent events.

`install_ui(app, clock)` adds it to the ASGI app (`headway.server.app.create_app`).
"""

from headway.server.ui.routes import install_ui

__all__ = ["install_ui"]
