"""Commands over services, releases, hosts and the event log."""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from typing import Annotated

import typer

from headway.api_models import CreateRelease
from headway.cli._common import (
    JsonOption,
    ServerOption,
    TokenOption,
    check_version,
    handled,
    make_client,
    parse_pairs,
    print_json,
    read_text,
    stdout_console,
)
from headway.cli._render import events_table, hosts_table, releases_table, service_line
from headway.client.api import DEFAULT_SERVER
from headway.domain.spec import load_service_yaml
from headway.errors import SpecError

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

release_app = typer.Typer(
    help="Create and list releases of a service.", no_args_is_help=True, add_completion=False
)


@handled
def apply(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="Service spec in YAML (see docs/spec.md).")
    ],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """Create or update a service from its YAML spec (validated here before it is sent)."""
    spec = load_service_yaml(read_text(file, "spec file"))
    with make_client(server, token) as client:
        service = client.apply_service(spec.model_dump(mode="json"))
    if json_out:
        print_json(service)
        return
    console = stdout_console()
    console.print(f"applied service [bold]{service.name}[/bold]")
    console.print(service_line(service))


@release_app.command("create")
@handled
def release_create(
    service: Annotated[str, typer.Argument(help="Service name.")],
    artifact: Annotated[
        str | None,
        typer.Option(
            "--artifact", help="Tarball to upload (or the sha256:... of one already uploaded)."
        ),
    ] = None,
    from_version: Annotated[
        str | None,
        typer.Option("--from", help="Copy this release's artifact and params (v3 or 3)."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="KEY=VALUE on top of the params; repeatable; KEY= removes."),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="Config revision (id, sha256:..., or git commit; 'none' drops it). Alone: a "
            "config-only release of the current artifact.",
        ),
    ] = None,
    note: Annotated[str, typer.Option("--note", help="Free text kept with the release.")] = "",
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """Create a release from an artifact file, from an existing release with new params or
    config, or (--config alone) from the current release with a new config."""
    if artifact is not None and from_version is not None:
        raise SpecError(
            "give one of --artifact FILE or --from vN, not both",
            hint="--artifact uploads a new tarball; --from copies a release and applies --param",
        )
    if artifact is None and from_version is None and config is None:
        raise SpecError(
            "give --artifact FILE, --from vN or --config REV",
            hint="--artifact uploads a new tarball; --from copies a release; --config sets its config",
        )
    params = parse_pairs(param or [], "--param")
    source = check_version(from_version, "--from") if from_version is not None else None
    artifact_path: Path | None = None
    digest: str | None = None
    if artifact is not None:
        if _DIGEST.match(artifact) and not Path(artifact).exists():
            digest = artifact
        else:
            artifact_path = Path(artifact)
            if not artifact_path.is_file():
                raise SpecError(
                    f"artifact file {artifact_path} does not exist",
                    hint="pass the path of a .tar.gz, or the sha256:<64 hex> of an uploaded one",
                )
    with make_client(server, token, timeout=60.0) as client:
        if artifact_path is not None:
            digest = client.upload_artifact(artifact_path).digest
        release = client.create_release(
            service,
            CreateRelease(
                artifact=digest, from_version=source, params=params, config=config, note=note
            ),
        )
    if json_out:
        print_json(release)
        return
    stdout_console().print(
        f"created release [bold]{release.service} {release.version}[/bold] "
        f"(artifact {release.artifact.digest[:19]}, {release.artifact.size:,} bytes"
        + (f", config {release.config.revision}" if release.config else "")
        + ")"
    )


@release_app.command("list")
@handled
def release_list(
    service: Annotated[str, typer.Argument(help="Service name.")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """List the releases of a service, oldest first; the current one is marked."""
    with make_client(server, token) as client:
        current = client.get_service(service).current_release
        releases = client.list_releases(service)
    if json_out:
        print_json({"service": service, "current_release": current, "releases": releases})
        return
    console = stdout_console()
    if not releases:
        console.print(f"service {service} has no releases yet; create one with "
                      f"`headway release create {service} --artifact FILE`")
        return
    console.print(releases_table(releases, current))


@handled
def hosts(
    service: Annotated[str | None, typer.Option("--service", help="Only this service.")] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """List hosts with their desired and observed release and health (and config drift)."""
    with make_client(server, token) as client:
        found = client.list_hosts(service=service)
    if json_out:
        print_json(found)
        return
    console = stdout_console()
    if not found:
        console.print("no hosts registered" + (f" for service {service}" if service else ""))
        return
    console.print(hosts_table(found))


@handled
def history(
    service: Annotated[str | None, typer.Option("--service", help="Only this service.")] = None,
    rollout: Annotated[str | None, typer.Option("--rollout", help="Only this rollout.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Show the newest N events.")
    ] = 100,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """Show the audit log (events), oldest first."""
    with make_client(server, token) as client:
        events = list(deque(client.iter_events(service=service, rollout=rollout), maxlen=limit))
    if json_out:
        print_json(events)
        return
    console = stdout_console()
    if not events:
        console.print("no events")
        return
    console.print(events_table(events))


@handled
def cluster(
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """Show which server leads the rollout runner (servers sharing a PostgreSQL database)."""
    with make_client(server, token) as client:
        found = client.cluster()
    if json_out:
        print_json(found)
        return
    console = stdout_console()
    console.print(f"this server: {found.server} ({found.role}), database {found.database}")
    lease = found.lease
    if lease is None:
        console.print("one server (SQLite): it always leads")
    elif not lease.holder:
        console.print("no server has led yet")
    elif lease.expires_in < 0:
        console.print(
            f"[yellow]no leader[/]: the lease of {lease.about or lease.holder} (token {lease.token}) "
            f"expired {-lease.expires_in:.1f}s ago; another server takes over within seconds"
        )
    else:
        console.print(
            f"leader: {lease.about or lease.holder} (token {lease.token}, lease renewed, "
            f"{lease.expires_in:.1f}s left)"
        )
