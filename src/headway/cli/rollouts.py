"""Commands that start, steer and follow rollouts."""

from __future__ import annotations

from collections import deque
from typing import Annotated

import typer
from rich.live import Live

from headway.api_models import RolloutOut
from headway.cli._common import (
    EXIT_ROLLOUT_FAILED,
    JsonOption,
    ReasonOption,
    ServerOption,
    TokenOption,
    WaitOption,
    check_version,
    handled,
    make_client,
    print_json,
    stdout_console,
)
from headway.cli._render import rollout_view, rollouts_table, version
from headway.client.api import DEFAULT_SERVER, ApiClient
from headway.client.watch import RolloutSnapshot, watch_rollout
from headway.domain.models import Event, RolloutStatus
from headway.errors import NotFound, SpecError

rollout_app = typer.Typer(
    help="Start, follow and steer rollouts.", no_args_is_help=True, add_completion=False
)


def follow(client: ApiClient, out: RolloutOut, *, json_out: bool, wait: bool) -> None:
    """Print ``out`` (or follow it live with ``wait``); exit 1 if it ended badly."""
    if wait:
        out = _wait(client, out.rollout.id, live=not json_out)
    if json_out:
        print_json(out)
    elif not wait:
        stdout_console().print(rollout_view(out))
    status = out.rollout.status
    if status.terminal and status is not RolloutStatus.SUCCEEDED:
        raise typer.Exit(EXIT_ROLLOUT_FAILED)


def _wait(client: ApiClient, rollout_id: str, *, live: bool) -> RolloutOut:
    if not live:
        return watch_rollout(client, rollout_id).rollout
    console = stdout_console()
    events: deque[Event] = deque(maxlen=20)
    with Live(console=console, refresh_per_second=4, transient=False) as display:

        def update(snapshot: RolloutSnapshot) -> None:
            events.extend(snapshot.new_events)
            display.update(
                rollout_view(snapshot.rollout, snapshot.hosts, list(events), snapshot.elapsed)
            )

        try:
            final = watch_rollout(client, rollout_id, on_update=update)
        except KeyboardInterrupt:
            console.print(
                f"stopped following; rollout {rollout_id} goes on on the server "
                f"(`headway rollout status {rollout_id}`)"
            )
            raise typer.Exit(130) from None
    if not console.is_terminal:
        console.line()  # Live leaves its last frame without a newline when not on a terminal
    r = final.rollout.rollout
    style = "green" if r.status is RolloutStatus.SUCCEEDED else "red"
    console.print(
        f"[{style}]rollout {r.id} {r.status.value.replace('_', ' ')}[/{style}] "
        f"after {final.elapsed:.1f}s: {r.hosts_done}/{r.hosts_total} hosts done"
        + (f", {r.hosts_failed} failed" if r.hosts_failed else "")
        + (f" ({r.reason})" if r.reason else "")
    )
    return final.rollout


@rollout_app.command("start")
@handled
def rollout_start(
    service: Annotated[str, typer.Argument(help="Service name.")],
    to: Annotated[
        str | None, typer.Option("--to", help="Target release (v3 or 3); default: the newest.")
    ] = None,
    note: Annotated[str, typer.Option("--note", help="Free text kept with the rollout.")] = "",
    hotfix: Annotated[
        bool,
        typer.Option(
            "--hotfix",
            help="Urgent change: 25% batches and a 1s healthy time instead of the spec's "
            "strategy; health checks and gates still run.",
        ),
    ] = False,
    wait: WaitOption = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """Roll SERVICE out to a release with the strategy of its spec (or --hotfix)."""
    target = check_version(to, "--to") if to is not None else None
    with make_client(server, token) as client:
        out = client.start_rollout(service, to=target, note=note, hotfix=hotfix)
        if not json_out and not wait:
            stdout_console().print(
                f"started rollout [bold]{out.rollout.id}[/bold] of {service} to "
                f"{version(out.rollout.to_release)}"
            )
        follow(client, out, json_out=json_out, wait=wait)


@rollout_app.command("status")
@handled
def rollout_status(
    rollout_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="Rollout id; default: list recent ones.")
    ] = None,
    service: Annotated[
        str | None, typer.Option("--service", help="The newest rollout of this service.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rollouts to list.")] = 20,
    wait: WaitOption = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """Show one rollout (by ID, or the newest of --service), or list recent rollouts."""
    if rollout_id is not None and service is not None:
        raise SpecError("give a rollout ID or --service, not both", hint="drop one of them")
    with make_client(server, token) as client:
        if rollout_id is None and service is None:
            if wait:
                raise SpecError(
                    "--wait follows one rollout", hint="give its ID or --service SERVICE"
                )
            rollouts = client.list_rollouts(limit=limit)
            if json_out:
                print_json(rollouts)
            elif rollouts:
                stdout_console().print(rollouts_table(rollouts))
            else:
                stdout_console().print("no rollouts yet")
            return
        if rollout_id is None:
            newest = client.list_rollouts(service=service, limit=1)
            if not newest:
                raise NotFound(
                    f"service {service} has had no rollout yet",
                    hint=f"start one with `headway rollout start {service}`",
                )
            rollout_id = newest[0].rollout.id
        follow(client, client.get_rollout(rollout_id), json_out=json_out, wait=wait)


def _action_command(action: str, summary: str) -> None:
    @handled
    def command(
        rollout_id: Annotated[str, typer.Argument(metavar="ID", help="Rollout id.")],
        reason: ReasonOption = "",
        wait: WaitOption = False,
        server: ServerOption = DEFAULT_SERVER,
        token: TokenOption = "",
        json_out: JsonOption = False,
    ) -> None:
        with make_client(server, token) as client:
            out = client.rollout_action(rollout_id, action, reason=reason)
            follow(client, out, json_out=json_out, wait=wait)

    command.__doc__ = summary
    rollout_app.command(action, help=summary)(command)


_action_command("pause", "Pause a rollout after its current step; hosts in flight finish.")
_action_command("resume", "Resume a paused rollout.")
_action_command("abort", "Stop a rollout; with auto_rollback, changed hosts go back.")
_action_command("promote", "Skip the remaining gates and pauses of a rollout.")


@handled
def rollback(
    service: Annotated[str, typer.Argument(help="Service name.")],
    reason: ReasonOption = "",
    wait: WaitOption = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """Roll SERVICE back to its previous release (a rollout through the same engine)."""
    with make_client(server, token) as client:
        out = client.rollback(service, reason=reason)
        if not json_out and not wait:
            stdout_console().print(
                f"started rollback [bold]{out.rollout.id}[/bold] of {service} to "
                f"{version(out.rollout.to_release)}"
            )
        follow(client, out, json_out=json_out, wait=wait)
