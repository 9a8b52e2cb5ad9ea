"""``headway server`` and ``headway agent``: long-running processes, imported lazily."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from headway.cli._common import handled, parse_pairs
from headway.client.api import DEFAULT_SERVER
from headway.errors import SpecError


def parse_listen(listen: str) -> tuple[str, int]:
    """``127.0.0.1:7400`` -> (``127.0.0.1``, 7400); ``[::1]:7400`` works too."""
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SpecError(
            f"--listen {listen!r} is not HOST:PORT", hint="write it like --listen 127.0.0.1:7400"
        )
    return host, int(port_text)


@handled
def server(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where the server keeps its database, artifacts, tokens.")
    ],
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to serve the API and agents on.")
    ] = "127.0.0.1:7400",
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            envvar="HEADWAY_DATABASE_URL",
            help="SQLAlchemy URL, e.g. postgresql+psycopg://127.0.0.1/headway; "
            "default: SQLite in the state dir",
            show_envvar=True,
        ),
    ] = None,
    lease_ttl: Annotated[
        float,
        typer.Option(
            "--lease-ttl",
            min=1.0,
            help="PostgreSQL: seconds a leader's lease lasts; a leader that stops renewing it "
            "(paused, cut off) is replaced after this long. A leader that dies is replaced "
            "within a quarter of it.",
        ),
    ] = 10.0,
    heartbeat: Annotated[
        float,
        typer.Option("--heartbeat", min=0.5, help="Seconds between agents' reports when idle."),
    ] = 15.0,
    reconnect_grace: Annotated[
        float,
        typer.Option(
            "--reconnect-grace",
            min=0.0,
            help="After a start or a takeover, seconds agents have to be heard from before "
            "they count as disconnected; keep it above --heartbeat.",
        ),
    ] = 20.0,
) -> None:
    """Run the control plane: REST API, agent channel and rollout engine.

    Several servers may share one PostgreSQL database (--database): one leads the rollout
    runner, the others serve the API and agents and hand commands to it. They must share
    the state directory (tokens, artifacts, config bundles), e.g. on one volume.
    """
    host, port = parse_listen(listen)
    if reconnect_grace <= heartbeat:
        raise SpecError(
            f"--reconnect-grace {reconnect_grace:g} is not above --heartbeat {heartbeat:g}",
            hint="agents report every heartbeat; give them longer than that to be heard from, "
            "e.g. --reconnect-grace 20 --heartbeat 15",
        )
    # Imported here, not at the top: `headway --help` and the API commands stay fast.
    from headway.server.main import run_server
    from headway.server.settings import ServerSettings

    run_server(
        ServerSettings(
            state_dir=state_dir,
            host=host,
            port=port,
            database_url=database or None,
            lease_ttl=lease_ttl,
            heartbeat=heartbeat,
            reconnect_grace=reconnect_grace,
        )
    )


@handled
def agent(
    name: Annotated[str, typer.Option("--name", help="This host's name (unique in the fleet).")],
    address: Annotated[
        str, typer.Option("--address", help="Address the app binds and the server reports.")
    ],
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where the agent keeps releases and its journal.")
    ],
    server_urls: Annotated[
        list[str] | None,
        typer.Option(
            "--server",
            envvar="HEADWAY_SERVER",
            help="URL of the Headway server; several servers (of one PostgreSQL database) "
            "comma-separated or --server repeated: the agent connects to the first and moves "
            "to the next when its connection fails or is lost",
            show_default=DEFAULT_SERVER,
            show_envvar=True,
        ),
    ] = None,
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar="HEADWAY_AGENT_TOKEN",
            help="Agent token (key \"agent\" of the server's tokens.json)",
            show_default=False,
            show_envvar=True,
        ),
    ] = "",
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="KEY=VALUE label, repeatable (e.g. service=web)."),
    ] = None,
) -> None:
    """Run the agent of one host: converge it to the release the server asks for."""
    from headway.agent.servers import parse_servers

    servers = parse_servers(server_urls or [DEFAULT_SERVER])
    if not token:
        raise SpecError(
            "no agent token given",
            hint="pass --token or set HEADWAY_AGENT_TOKEN (key \"agent\" of the server's "
            "tokens.json)",
        )
    labels = parse_pairs(label or [], "--label")
    from headway.agent.runtime import run_agent
    from headway.agent.settings import AgentSettings

    settings = AgentSettings(
        server=",".join(servers),
        token=token,
        name=name,
        address=address,
        labels=labels,
        state_dir=state_dir,
    )
    asyncio.run(run_agent(settings))
