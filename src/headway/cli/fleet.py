"""``headway fleet up|down`` and ``headway demo``: a whole fleet on this machine."""

from __future__ import annotations

import shlex
from collections import deque
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from headway.cli._common import (
    EXIT_ROLLOUT_FAILED,
    JsonOption,
    handled,
    print_json,
    stderr_console,
    stdout_console,
)
from headway.cli._render import rollout_view
from headway.client.watch import RolloutSnapshot
from headway.domain.models import Event
from headway.fleet import demo as demo_module
from headway.fleet import local

fleet_app = typer.Typer(
    help="Run a local fleet: one server and N agents on loopback addresses.",
    no_args_is_help=True,
    add_completion=False,
)

StateDirOption = Annotated[
    Path, typer.Option("--state-dir", help="Where the fleet keeps its state, logs and pids.")
]
HostsOption = Annotated[
    int, typer.Option("--hosts", min=1, max=local.MAX_HOSTS, help="Number of hosts.")
]
PortOption = Annotated[
    int, typer.Option("--port", help="Server port; a free one is picked if it is taken.")
]
PrefixOption = Annotated[
    str,
    typer.Option(
        "--address-prefix", help="First three octets of the hosts' loopback addresses."
    ),
]


def _progress(json_out: bool) -> local.Log:
    console = stderr_console()

    def log(message: str) -> None:
        if not json_out:
            console.print(f"[dim]{escape(message)}[/dim]")

    return log


@fleet_app.command("up")
@handled
def fleet_up(
    hosts: HostsOption = 3,
    state_dir: StateDirOption = Path("state/fleet"),
    port: PortOption = local.DEFAULT_PORT,
    address_prefix: PrefixOption = local.DEFAULT_ADDRESS_PREFIX,
    json_out: JsonOption = False,
) -> None:
    """Start a server and N agents running the sample service `web` on release v1."""
    fleet = local.fleet_up(
        state_dir, hosts, port=port, address_prefix=address_prefix, log=_progress(json_out)
    )
    if json_out:
        print_json(fleet.to_json())
        return
    console = stdout_console()
    console.print(f"[green]fleet up[/green]: {len(fleet.hosts)} hosts run "
                  f"{fleet.service} v{fleet.release}")
    console.print(f"  server     {fleet.server}")
    console.print(f"  token      {fleet.token}")
    console.print(f"  state dir  {fleet.state_dir}")
    for host in fleet.hosts:
        console.print(f"  {host.name}  {host.address}")
    _print_try(fleet, stop_hint=True)


def _print_try(fleet: local.Fleet, *, stop_hint: bool) -> None:
    console = stdout_console()
    state = shlex.quote(str(fleet.state_dir))
    console.print("\ntry:")
    console.print(f"  export HEADWAY_SERVER={fleet.server} HEADWAY_TOKEN={fleet.token}")
    for command in (
        f"headway hosts --service {fleet.service}",
        f"headway release list {fleet.service}",
        f"headway rollout status --service {fleet.service}",
        f"headway rollback {fleet.service} --wait",
        f"headway history --service {fleet.service}",
    ):
        console.print(f"  {command}")
    if stop_hint:
        console.print(f"  headway fleet down --state-dir {state}")


@fleet_app.command("down")
@handled
def fleet_down(
    state_dir: StateDirOption = Path("state/fleet"),
    json_out: JsonOption = False,
) -> None:
    """Stop the agents, the apps and the server of a local fleet (idempotent)."""
    result = local.fleet_down(state_dir, log=_progress(json_out))
    if json_out:
        print_json({"state_dir": str(state_dir.resolve()), "stopped": result.stopped})
        return
    console = stdout_console()
    if result.nothing_ran:
        console.print(f"no fleet runs from {state_dir}; nothing to stop")
    else:
        console.print(f"stopped {len(result.stopped)} processes of the fleet in {state_dir}")


class _LiveRollout:
    """A Rich Live view of the rollout that steps aside for log lines."""

    def __init__(self, console: Console, log: local.Log, *, enabled: bool) -> None:
        self._live = Live(console=console, refresh_per_second=4) if enabled else None
        self._log = log
        self._events: deque[Event] = deque(maxlen=20)

    def update(self, snapshot: RolloutSnapshot) -> None:
        self._events.extend(snapshot.new_events)
        if self._live is None:
            return
        if not self._live.is_started:
            self._live.start()
        self._live.update(
            rollout_view(snapshot.rollout, snapshot.hosts, list(self._events), snapshot.elapsed)
        )

    def log(self, message: str) -> None:
        self.close()
        self._log(message)

    def close(self) -> None:
        if self._live is not None and self._live.is_started:
            self._live.stop()
            if not self._live.console.is_terminal:
                self._live.console.line()


@handled
def demo(
    hosts: HostsOption = demo_module.DEFAULT_DEMO_HOSTS,
    stay: Annotated[
        bool, typer.Option("--stay", help="Keep the fleet running afterwards to explore it.")
    ] = False,
    state_dir: StateDirOption = demo_module.DEFAULT_DEMO_DIR,
    port: PortOption = local.DEFAULT_PORT,
    address_prefix: PrefixOption = local.DEFAULT_ADDRESS_PREFIX,
    json_out: JsonOption = False,
) -> None:
    """Start a fresh local fleet on v1, roll it to v2 with live progress, summarise.

    Exits 0 only if every host ends healthy on v2.
    """
    console = stdout_console()
    view = _LiveRollout(console, _progress(json_out), enabled=not json_out)
    try:
        summary = demo_module.run_demo(
            state_dir,
            hosts,
            stay=stay,
            port=port,
            address_prefix=address_prefix,
            on_update=view.update,
            log=view.log,
        )
    finally:
        view.close()

    if json_out:
        print_json(summary.to_json())
    else:
        style = "green" if summary.ok else "red"
        console.print(
            f"\n[{style}]{'demo passed' if summary.ok else 'demo failed'}[/{style}]: rollout "
            f"{summary.rollout_id} {summary.status.value.replace('_', ' ')} in "
            f"{summary.duration_seconds:.1f}s; {summary.hosts_healthy_on_target}/"
            f"{summary.hosts_total} hosts healthy on v{summary.to_release}; "
            f"{summary.events} events"
            + (f" ({escape(summary.reason)})" if summary.reason else "")
        )
        if stay:
            fleet = local.load_fleet(summary.state_dir)
            if fleet is not None:
                _print_try(fleet, stop_hint=True)
    if not summary.ok:
        raise typer.Exit(EXIT_ROLLOUT_FAILED)
