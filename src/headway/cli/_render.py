"""Rich tables and the live rollout view. Pure functions: data in, renderables out."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from headway.api_models import HostProgressOut, RolloutOut, ServiceOut
from headway.domain.models import ConfigRevision, Event, Health, HostView, Release, RolloutStatus

STATUS_STYLE = {
    RolloutStatus.RUNNING: "cyan",
    RolloutStatus.PAUSED: "yellow",
    RolloutStatus.ROLLING_BACK: "magenta",
    RolloutStatus.SUCCEEDED: "green",
    RolloutStatus.FAILED: "red",
    RolloutStatus.ROLLED_BACK: "red",
    RolloutStatus.ABORTED: "red",
}
HEALTH_STYLE = {
    Health.UNKNOWN: "dim",
    Health.STARTING: "yellow",
    Health.HEALTHY: "green",
    Health.UNHEALTHY: "red",
    Health.FAILED: "bold red",
}
HOST_TABLE_LIMIT = 24
RECENT_EVENTS = 8


def version(number: int | None) -> str:
    return f"v{number}" if number is not None else "-"


def clock_time(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts > 0 else "-"


def short_digest(digest: str) -> str:
    return digest[: len("sha256:") + 12]


def status_text(status: RolloutStatus) -> Text:
    return Text(status.value.replace("_", " "), style=STATUS_STYLE[status])


def health_text(health: Health) -> Text:
    return Text(health.value, style=HEALTH_STYLE[health])


def hosts_table(hosts: Sequence[HostView], phases: dict[str, HostProgressOut] | None = None) -> Table:
    table = Table(title=None, show_edge=False, pad_edge=False)
    table.add_column("host", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("service")
    table.add_column("release")
    table.add_column("health")
    with_config = any(h.config_applied or h.config_drift for h in hosts)  # only for config users
    if with_config:
        table.add_column("config")
    if phases is not None:
        table.add_column("phase")
    table.add_column("detail", overflow="fold")
    for host in sorted(hosts, key=lambda h: h.name):
        release = version(host.observed_release)
        if host.desired_release is not None and host.desired_release != host.observed_release:
            release += f" -> {version(host.desired_release)}"
        name = Text(host.name, style="" if host.connected else "dim")
        if not host.connected:
            name.append(" (offline)", style="dim red")
        row: list[Text | str] = [
            name,
            host.address,
            host.service,
            release,
            health_text(host.health),
        ]
        if with_config:
            row.append(config_text(host))
        if phases is not None:
            progress = phases.get(host.name)
            row.append(progress.phase if progress else "")
        row.append(escape(host.detail))
        table.add_row(*row)
    return table


def config_text(host: HostView) -> Text:
    """``drift`` (red) when the files on disk differ from what the agent wrote; else ``ok``."""
    if host.config_drift:
        return Text("drift", style="bold red")
    return Text("ok", style="green") if host.config_applied else Text("-", style="dim")


def configs_table(revisions: Sequence[ConfigRevision], current_digest: str | None) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("revision", no_wrap=True)
    table.add_column("source")
    table.add_column("commit", no_wrap=True)
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    table.add_column("created")
    table.add_column("by", style="dim")
    for revision in revisions:
        label = Text(revision.id, style="bold green" if revision.digest == current_digest else "")
        if revision.digest == current_digest:
            label.append(" (current)", style="green")
        table.add_row(
            label,
            revision.source.value,
            revision.git_commit[:12],
            str(len(revision.files)),
            f"{revision.size:,}",
            clock_time(revision.created_at),
            escape(revision.created_by),
        )
    return table


def host_counts(hosts: Sequence[HostView]) -> Text:
    """``v2 healthy 4 · v1 healthy 5 · v1 -> v2 starting 1``"""
    counts = Counter(
        (host.observed_release, host.desired_release, host.health) for host in hosts
    )
    text = Text()
    for index, ((observed, desired, health), count) in enumerate(
        sorted(counts.items(), key=lambda item: (-(item[0][0] or 0), item[0][2].value))
    ):
        if index:
            text.append("  ·  ", style="dim")
        label = version(observed)
        if desired is not None and desired != observed:
            label += f" -> {version(desired)}"
        text.append(f"{label} ")
        text.append(health.value, style=HEALTH_STYLE[health])
        text.append(f" {count}", style="bold")
    return text


def events_table(events: Sequence[Event]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("time")
    table.add_column("kind")
    table.add_column("service")
    table.add_column("host")
    table.add_column("message", overflow="fold")
    table.add_column("actor", style="dim")
    for event in events:
        table.add_row(
            str(event.id),
            clock_time(event.ts),
            event.kind,
            event.service,
            event.host,
            escape(event.message),
            event.actor,
        )
    return table


def releases_table(releases: Sequence[Release], current: int | None) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("release", no_wrap=True)
    table.add_column("artifact", no_wrap=True)
    table.add_column("size", justify="right")
    table.add_column("params")
    with_config = any(r.config is not None for r in releases)
    if with_config:
        table.add_column("config", no_wrap=True)
    table.add_column("created")
    table.add_column("note", overflow="fold")
    for release in sorted(releases, key=lambda r: r.number):
        label = Text(release.version, style="bold green" if release.number == current else "")
        if release.number == current:
            label.append(" (current)", style="green")
        cells: list[Text | str] = [
            label,
            short_digest(release.artifact.digest),
            f"{release.artifact.size:,}",
            " ".join(f"{k}={v}" for k, v in sorted(release.params.items())),
        ]
        if with_config:
            cells.append(release.config.revision if release.config else "-")
        cells += [clock_time(release.created_at), escape(release.note)]
        table.add_row(*cells)
    return table


def rollouts_table(rollouts: Sequence[RolloutOut]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("rollout", no_wrap=True)
    table.add_column("service", no_wrap=True)
    table.add_column("change")
    table.add_column("status")
    table.add_column("step", justify="right")
    table.add_column("hosts", justify="right")
    table.add_column("started")
    table.add_column("reason", overflow="fold")
    for out in rollouts:
        r = out.rollout
        table.add_row(
            r.id,
            r.service,
            f"{version(r.from_release)} -> {version(r.to_release)}",
            status_text(r.status),
            f"{r.step}/{r.steps}",
            f"{r.hosts_done}/{r.hosts_total}" + (f" ({r.hosts_failed} failed)" if r.hosts_failed else ""),
            clock_time(r.created_at),
            escape(r.reason),
        )
    return table


def service_line(service: ServiceOut) -> Text:
    text = Text(f"service {service.name}: ", style="bold")
    text.append(f"current release {version(service.current_release)}, ")
    text.append(f"{service.hosts_healthy}/{service.hosts} hosts healthy")
    if service.active_rollout:
        text.append(f", rollout {service.active_rollout} active", style="cyan")
    return text


def rollout_view(
    out: RolloutOut,
    hosts: Sequence[HostView] = (),
    events: Sequence[Event] = (),
    elapsed: float | None = None,
) -> RenderableType:
    """The rollout as one block: header, progress bar, hosts, recent events."""
    r = out.rollout
    header = Text()
    header.append(f"rollout {r.id}", style="bold")
    header.append(f"  {r.service}  {version(r.from_release)} -> {version(r.to_release)}  ")
    header.append_text(status_text(r.status))
    header.append(f"  step {r.step}/{r.steps}  ({r.strategy})", style="dim")
    if elapsed is not None:
        header.append(f"  {elapsed:.1f}s", style="dim")

    total = max(r.hosts_total, 1)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=total, completed=min(r.hosts_done, total), width=40),
        Text(
            f"{r.hosts_done}/{r.hosts_total} hosts done"
            + (f", {r.hosts_failed} failed" if r.hosts_failed else ""),
            style="red" if r.hosts_failed else "",
        ),
    )
    parts: list[RenderableType] = [header, bar]
    if r.reason:
        parts.append(Text(f"reason: {r.reason}", style=STATUS_STYLE[r.status]))
    if hosts:
        parts.append(host_counts(hosts))
        if len(hosts) <= HOST_TABLE_LIMIT:
            phases = {h.name: h for h in out.hosts}
            parts.append(hosts_table(hosts, phases))
    if events:
        recent = events[-RECENT_EVENTS:]
        parts.append(Text("recent events", style="bold"))
        for event in recent:
            line = Text(f"{clock_time(event.ts)} ", style="dim")
            line.append(f"{event.kind:<18} ", style="cyan")
            if event.host:
                line.append(f"{event.host} ", style="bold")
            line.append(event.message)
            parts.append(line)
    return Group(*parts)
