"""``headway fleet up|down`` and ``headway demo``: a whole fleet behind HAProxy on this machine."""

from __future__ import annotations

import functools
import shlex
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol, TypeVar

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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
from headway.domain.spec import StrategyKind
from headway.errors import SpecError
from headway.fleet import bad_release as bad_module
from headway.fleet import demo as demo_module
from headway.fleet import local

fleet_app = typer.Typer(
    help="Run a local fleet: one server, one HAProxy and N agents on loopback addresses.",
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
TrafficPortOption = Annotated[
    int,
    typer.Option(
        "--traffic-port",
        min=0,
        max=65535,
        help="HAProxy's port (send requests here); a free one is picked if it is taken, "
        "any free one with 0.",
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
    pools: Annotated[
        str | None,
        typer.Option(
            "--pools",
            help="Two pool names, e.g. blue,green: the first half of the hosts (rounded up) "
            "get label pool=<first>, the rest pool=<second>; the service's strategy becomes "
            "blue-green and the first pool takes the traffic.",
            show_default=False,
        ),
    ] = None,
    state_dir: StateDirOption = Path("state/fleet"),
    port: PortOption = local.DEFAULT_PORT,
    traffic_port: TrafficPortOption = local.DEFAULT_TRAFFIC_PORT,
    address_prefix: PrefixOption = local.DEFAULT_ADDRESS_PREFIX,
    json_out: JsonOption = False,
) -> None:
    """Start a server, an HAProxy and N agents running the sample service `web` on v1.

    Returns once every host is healthy and HAProxy sends requests to every host (with
    --pools, to the live pool only). `traffic` in --json is HAProxy's URL.
    """
    fleet = local.fleet_up(
        state_dir,
        hosts,
        port=port,
        traffic_port=traffic_port,
        address_prefix=address_prefix,
        pools=local.parse_pools(pools) if pools is not None else None,
        log=_progress(json_out),
    )
    if json_out:
        print_json(fleet.to_json())
        return
    console = stdout_console()
    console.print(f"[green]fleet up[/green]: {len(fleet.hosts)} hosts run "
                  f"{fleet.service} v{fleet.release}")
    console.print(f"  traffic    {fleet.traffic}   (HAProxy; send requests here)")
    console.print(f"  server     {fleet.server}")
    console.print(f"  token      {fleet.token}")
    console.print(f"  state dir  {fleet.state_dir}")
    console.print(f"  spec       {fleet.spec_path}")
    if fleet.pools:
        console.print(f"  pools      {fleet.pools[0]} (live), {fleet.pools[1]} (idle)")
    for host in fleet.hosts:
        console.print(f"  {host.name}  {host.address}" + (f"  pool={host.pool}" if host.pool else ""))
    _print_try(fleet, stop_hint=True)


def _print_try(fleet: local.Fleet, *, stop_hint: bool) -> None:
    console = stdout_console()
    state = shlex.quote(str(fleet.state_dir))
    console.print("\ntry:")
    console.print(f"  export HEADWAY_SERVER={fleet.server} HEADWAY_TOKEN={fleet.token}")
    if fleet.traffic:
        console.print(f"  curl -si {fleet.traffic}/ | grep -i x-app-version")
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
    """Stop the agents, the apps, HAProxy and the server of a local fleet (idempotent)."""
    result = local.fleet_down(state_dir, log=_progress(json_out))
    if json_out:
        print_json({"state_dir": str(state_dir.resolve()), "stopped": result.stopped})
        return
    console = stdout_console()
    if result.nothing_ran:
        console.print(f"no fleet runs from {state_dir}; nothing to stop")
    else:
        console.print(f"stopped {len(result.stopped)} processes of the fleet in {state_dir}")


def traffic_view(frame: demo_module.DemoFrame) -> RenderableType:
    """One line of numbers and one of versions: the load as the demo sends it."""
    t = frame.traffic
    line = Text()
    line.append(f"traffic ({frame.phase.value})", style="bold")
    line.append(f"  {t.rps:4.0f} req/s  sent {t.sent}  in flight {t.in_flight}  ")
    line.append(f"errors {t.failed}", style="bold red" if t.failed else "green")
    line.append(f"  {t.elapsed:.0f}s", style="dim")
    versions = Text("answering  ", style="bold")
    total = sum(t.versions.values()) or 1
    for name, count in t.versions.items():
        versions.append(f"{name} ", style="cyan")
        versions.append(f"{100 * count / total:3.0f}%  ")
    if not t.versions:
        versions.append("-", style="dim")
    return Group(line, versions)


class _LiveDemo:
    """A Rich Live view of the traffic and the rollout that steps aside for log lines."""

    def __init__(self, console: Console, log: local.Log, *, enabled: bool) -> None:
        self._live = Live(console=console, refresh_per_second=4) if enabled else None
        self._log = log
        self._events: deque[Event] = deque(maxlen=20)
        self._rollout: RolloutSnapshot | None = None

    def update(self, frame: demo_module.DemoFrame) -> None:
        if frame.rollout is not None and frame.rollout is not self._rollout:
            self._events.extend(frame.rollout.new_events)
            self._rollout = frame.rollout
        if self._live is None:
            return
        if not self._live.is_started:
            self._live.start()
        parts: list[RenderableType] = [traffic_view(frame)]
        if self._rollout is not None:
            snap = self._rollout
            parts.append(rollout_view(snap.rollout, snap.hosts, list(self._events), snap.elapsed))
        self._live.update(Group(*parts))

    def log(self, message: str) -> None:
        self.close()
        self._log(message)

    def close(self) -> None:
        if self._live is not None and self._live.is_started:
            self._live.stop()
            if not self._live.console.is_terminal:
                self._live.console.line()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _print_figures(console: Console, summary: demo_module.DemoSummary | bad_module.BadReleaseSummary) -> None:
    table = Table(title="zero-downtime figures (by when each request was due)", show_edge=False)
    for column in ("window", "sent", "2xx", "non-2xx", "conn errors", "p50", "p99",
                   "p50 /", "p99 /", "versions"):
        table.add_column(column, justify="right" if column != "window" else "left")
    for name, load in summary.load.items():
        table.add_row(
            name, str(load.sent), str(load.ok),
            Text(str(load.non_2xx), style="red" if load.non_2xx else ""),
            Text(str(load.connection_errors), style="red" if load.connection_errors else ""),
            _ms(load.p50), _ms(load.p99), _ms(load.p50_fast), _ms(load.p99_fast),
            " ".join(f"{v}:{n}" for v, n in load.versions.items()) or "-",
        )
    console.print(table)
    console.print("[dim]p50/p99 over every answer (5% of requests sleep 2-5 s); "
                  "p50 / and p99 / over requests to / only[/dim]")


@handled
def demo(
    strategy: Annotated[
        StrategyKind | None,
        typer.Option(
            "--strategy",
            help="How to roll v2 out: rolling (20% batches), canary (10%, pause 5s, 50%, "
            "pause 5s, 100%) or blue-green (hosts in pools blue and green; 50% then 100% of "
            "traffic to the new pool, a 5 s rollback window). Default: rolling; canary "
            "with --bad-release.",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    hosts: HostsOption = demo_module.DEFAULT_DEMO_HOSTS,
    rate: Annotated[
        float,
        typer.Option(
            "--rate", min=1.0, max=1000.0,
            help="Requests per second sent through HAProxy, on a fixed schedule (5% of them "
            "to /slow?ms=2000-5000).",
        ),
    ] = demo_module.DEFAULT_RATE,
    stay: Annotated[
        bool, typer.Option("--stay", help="Keep the fleet running afterwards to explore it.")
    ] = False,
    bad_release: Annotated[
        bool,
        typer.Option(
            "--bad-release",
            help="After a good v2, roll out a v3 that answers 500 to 30% of requests "
            "(ERROR_RATE=0.3): the first canary step's verification catches it and Headway "
            "rolls back by itself; the summary shows the time to detect, the time to roll "
            "back and how many requests the bad release answered.",
        ),
    ] = False,
    state_dir: StateDirOption = demo_module.DEFAULT_DEMO_DIR,
    port: PortOption = local.DEFAULT_PORT,
    traffic_port: TrafficPortOption = local.DEFAULT_TRAFFIC_PORT,
    address_prefix: PrefixOption = local.DEFAULT_ADDRESS_PREFIX,
    json_out: JsonOption = False,
) -> None:
    """Start a fresh local fleet on v1 behind HAProxy, send it live traffic, roll it to v2
    with live progress, and end with the zero-downtime figures.

    Exits 0 only if every host ends healthy on v2 (blue-green: the new live pool; the old
    one stays on v1 for a rollback) and no request failed. With --bad-release, only if v3
    was stopped at the first canary step and rolled back, with every host healthy on v2.
    """
    if bad_release and strategy not in (None, StrategyKind.CANARY):
        raise SpecError(
            f"--bad-release runs a canary rollout, not {strategy.value}",
            hint="leave out --strategy (or pass --strategy canary)",
        )
    options = _DemoOptions(state_dir, hosts, rate, stay, port, traffic_port, address_prefix, json_out)
    if bad_release:
        _run_demo(options, bad_module.run_bad_release_demo, _print_bad_release)
    else:
        run = functools.partial(demo_module.run_demo, strategy=strategy or StrategyKind.ROLLING)
        _run_demo(options, run, _print_upgrade)


@dataclass(frozen=True)
class _DemoOptions:
    """The options of `headway demo` that both of its runs (v2, or --bad-release) take."""

    state_dir: Path
    hosts: int
    rate: float
    stay: bool
    port: int
    traffic_port: int
    address_prefix: str
    json_out: bool


_Summary = TypeVar("_Summary", demo_module.DemoSummary, bad_module.BadReleaseSummary)
_Summary_co = TypeVar("_Summary_co", covariant=True)


class _DemoRun(Protocol[_Summary_co]):
    """`demo_module.run_demo` (strategy chosen) or `bad_module.run_bad_release_demo`."""

    def __call__(
        self,
        state_dir: Path,
        hosts: int,
        *,
        rate: float,
        stay: bool,
        port: int,
        traffic_port: int,
        address_prefix: str,
        on_frame: Callable[[demo_module.DemoFrame], None],
        log: local.Log,
    ) -> _Summary_co: ...


def _run_demo(
    options: _DemoOptions, run: _DemoRun[_Summary], report: Callable[[Console, _Summary], None]
) -> None:
    """``run`` with the live view (none with --json), then its summary: one JSON document,
    or ``report`` and, with --stay, how to explore the fleet; exit 1 unless it passed."""
    console = stdout_console()
    view = _LiveDemo(console, _progress(options.json_out), enabled=not options.json_out)
    try:
        summary = run(
            options.state_dir,
            options.hosts,
            rate=options.rate,
            stay=options.stay,
            port=options.port,
            traffic_port=options.traffic_port,
            address_prefix=options.address_prefix,
            on_frame=view.update,
            log=view.log,
        )
    finally:
        view.close()
    if options.json_out:
        print_json(summary.to_json())
    else:
        report(console, summary)
        if options.stay:
            fleet = local.load_fleet(summary.state_dir)
            if fleet is not None:
                _print_try(fleet, stop_hint=True)
    if not summary.ok:
        raise typer.Exit(EXIT_ROLLOUT_FAILED)


def _print_outcome(console: Console, ok: bool, outcome: str, problems: list[str]) -> None:
    style = "green" if ok else "red"
    console.print(f"\n[{style}]{'demo passed' if ok else 'demo failed'}[/{style}]: {outcome}")
    for problem in problems:
        console.print(f"  [red]{escape(problem)}[/red]")


def _print_upgrade(console: Console, summary: demo_module.DemoSummary) -> None:
    _print_outcome(
        console,
        summary.ok,
        f"{summary.strategy} rollout {summary.rollout_id} "
        f"{summary.status.value.replace('_', ' ')} in {summary.duration_seconds:.1f}s; "
        f"{summary.hosts_healthy_on_target}/{summary.hosts_total} hosts healthy on "
        f"v{summary.to_release}; {summary.events} events"
        + (f" ({escape(summary.reason)})" if summary.reason else ""),
        summary.problems,
    )
    _print_figures(console, summary)
    total = summary.total
    before, during = summary.load["before"], summary.load["during"]
    console.print(
        f"[bold]{total.sent} requests, {total.non_2xx} non-2xx, "
        f"{total.connection_errors} connection errors[/bold]; p50/p99 before "
        f"{_ms(before.p50)}/{_ms(before.p99)}, during {_ms(during.p50)}/{_ms(during.p99)}; "
        f"versions seen: {', '.join(sorted(total.versions)) or '-'}"
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _print_bad_release(console: Console, summary: bad_module.BadReleaseSummary) -> None:
    bad = summary.bad
    outcome = (
        f"{summary.bad_version} rollout {bad.id} {bad.status.value.replace('_', ' ')}"
        if bad is not None
        else f"{summary.bad_version} was never rolled out"
    )
    _print_outcome(
        console,
        summary.ok,
        f"{outcome}; {summary.hosts_healthy_on_previous}/{summary.hosts_total} hosts healthy on the "
        f"previous release",
        summary.problems,
    )
    if summary.timings.verdict:
        console.print(f"[bold]verdict[/bold]: {escape(summary.timings.verdict)}")
    _print_figures(console, summary)
    t = summary.timings
    params = ", ".join(f"{k}={v}" for k, v in summary.bad_params.items())
    console.print(
        f"[bold]bad release {summary.bad_version} ({params})[/bold]: caught in "
        f"[bold]{_seconds(t.detect)}[/bold] (bad host in load balancing -> failing verdict; "
        f"each verification observes {summary.verification_seconds:g} s), rolled back in "
        f"[bold]{_seconds(t.rollback)}[/bold] (drain {_seconds(t.drain)}, then "
        f"{_seconds(t.after_drain)}); it answered [bold]{summary.bad_requests}[/bold] "
        f"requests, {summary.bad_requests_failed} of them failed"
    )
