"""``headway config``: push config files as revisions, list them, restore drifted hosts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from headway.api_models import CreateRelease
from headway.cli._common import (
    JsonOption,
    ServerOption,
    TokenOption,
    WaitOption,
    handled,
    make_client,
    print_json,
    stdout_console,
)
from headway.cli._render import configs_table, version
from headway.cli.rollouts import follow
from headway.client.api import DEFAULT_SERVER
from headway.domain.config_spec import ConfigSpec
from headway.errors import SpecError
from headway.server.config_bundle import build_bundle, files_from_directory

config_app = typer.Typer(
    help="Config files of a service: push revisions, list them, restore drifted hosts.",
    no_args_is_help=True,
    add_completion=False,
)

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@config_app.command("push")
@handled
def config_push(
    service: Annotated[str, typer.Argument(help="Service name.")],
    directory: Annotated[
        Path | None,
        typer.Argument(help="Directory of config files (sent as a reproducible .tar.gz)."),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Instead of DIR: an HTTP(S) .tar.gz the server fetches.")
    ] = None,
    digest: Annotated[
        str | None, typer.Option("--digest", help="With --url: the bundle's sha256:... (it is pinned).")
    ] = None,
    release: Annotated[
        bool, typer.Option("--release", help="Also create a config-only release (current artifact).")
    ] = False,
    rollout: Annotated[
        bool, typer.Option("--rollout", help="Also create the release and start its rollout.")
    ] = False,
    hotfix: Annotated[
        bool, typer.Option("--hotfix", help="With --rollout: 25% batches, 1s bake, still verified.")
    ] = False,
    wait: WaitOption = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """Upload DIR (or have the server fetch --url) as a new config revision of SERVICE.

    Links, devices, absolute paths and '..' are refused; a top-level .git is skipped. The
    same files always give the same revision id.
    """
    if (directory is None) == (url is None):
        raise SpecError("give a DIR or --url URL --digest sha256:...", hint="headway config push web ./conf")
    if url is not None and (digest is None or not _DIGEST.match(digest)):
        raise SpecError("--url needs --digest sha256:<64 hex digits>", hint="the bundle is pinned by digest")
    if (hotfix or wait) and not rollout:
        raise SpecError("--hotfix and --wait go with --rollout", hint="add --rollout")
    with make_client(server, token, timeout=60.0) as client:
        spec = client.get_service(service).spec
        max_bytes = ConfigSpec.model_validate(spec.get("config") or {}).max_bytes
        if directory is not None:
            pushed = client.push_config(service, build_bundle(files_from_directory(directory, max_bytes)))
        else:
            assert url is not None and digest is not None
            pushed = client.push_config_url(service, url, digest)
        revision = pushed.revision
        made = None
        if release or rollout:
            made = client.create_release(
                service, CreateRelease(config=revision.id, note=f"config {revision.id}")
            )
        if not json_out:
            stdout_console().print(
                f"config revision [bold]{revision.id}[/bold] of {service}: {len(revision.files)} files, "
                f"{revision.size:,} bytes" + ("" if pushed.created else " (already stored)")
            )
            if made is not None:
                stdout_console().print(f"created release [bold]{service} {made.version}[/bold]")
        if not rollout:
            if json_out:
                print_json({"revision": revision, "created": pushed.created, "release": made})
            return
        assert made is not None
        out = client.start_rollout(service, to=made.version, hotfix=hotfix)
        if not json_out and not wait:
            stdout_console().print(
                f"started rollout [bold]{out.rollout.id}[/bold] of {service} "
                f"to {version(out.rollout.to_release)}"
            )
        follow(client, out, json_out=json_out, wait=wait)


@config_app.command("list")
@handled
def config_list(
    service: Annotated[str, typer.Argument(help="Service name.")],
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="Revisions to list.")] = 50,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """List the config revisions of SERVICE, newest first; the current release's is marked."""
    with make_client(server, token) as client:
        current = client.get_service(service).current_release
        current_digest = None
        if current is not None:
            config = client.get_release(service, current).config
            current_digest = config.digest if config else None
        revisions = client.list_configs(service, limit)
    if json_out:
        print_json({"service": service, "current": current_digest, "revisions": revisions})
        return
    console = stdout_console()
    if not revisions:
        console.print(f"{service} has no config revisions; push one with `headway config push {service} DIR`")
        return
    console.print(configs_table(revisions, current_digest))


@config_app.command("restore")
@handled
def config_restore(
    service: Annotated[str, typer.Argument(help="Service name.")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = "",
    json_out: JsonOption = False,
) -> None:
    """Put the released config back on hosts whose files were edited by hand (drift)."""
    with make_client(server, token) as client:
        out = client.restore_config(service)
    if json_out:
        print_json(out)
        return
    console = stdout_console()
    if not out.hosts:
        console.print(f"no host of {service} reports config drift; nothing to restore")
        return
    console.print(
        f"restoring the released config on {len(out.hosts)} host(s): {', '.join(out.hosts)} "
        "(see `headway hosts`)"
    )
