"""The ``headway`` command: a thin layer over the REST API client, with Rich output.

Every command takes ``--json`` (one JSON document on stdout). Exit codes:
0 success; 1 a rollout failed, was rolled back or aborted; 2 bad input or
any Headway error (``error:`` and ``hint:`` on stderr).
"""

from __future__ import annotations

from typing import Annotated

import typer

from headway import __version__
from headway.cli import configs, fleet, processes, resources, rollouts

app = typer.Typer(
    name="headway",
    help="Upgrade fleets of servers with no downtime, verification on live traffic and "
    "automatic rollback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"headway {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Headway: rolling upgrades of fleets, verified and reversible."""


app.command("server", rich_help_panel="Processes")(processes.server)
app.command("agent", rich_help_panel="Processes")(processes.agent)
app.command("apply", rich_help_panel="Services")(resources.apply)
app.add_typer(resources.release_app, name="release", rich_help_panel="Services")
app.add_typer(configs.config_app, name="config", rich_help_panel="Services")
app.add_typer(rollouts.rollout_app, name="rollout", rich_help_panel="Rollouts")
app.command("rollback", rich_help_panel="Rollouts")(rollouts.rollback)
app.command("hosts", rich_help_panel="Fleet")(resources.hosts)
app.command("history", rich_help_panel="Fleet")(resources.history)
app.command("cluster", rich_help_panel="Fleet")(resources.cluster)
app.add_typer(fleet.fleet_app, name="fleet", rich_help_panel="Local fleet")
app.command("demo", rich_help_panel="Local fleet")(fleet.demo)


def main() -> None:
    app()
