"""The REST API (routes listed in `headway.api_models`)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from headway.api_models import (
    ApplyService,
    ClusterOut,
    CreateRelease,
    HostProgressOut,
    LeaseOut,
    OperatorAction,
    RolloutOut,
    ServiceOut,
    StartRollout,
)
from headway.domain.models import (
    ArtifactRef,
    Event,
    Health,
    HostView,
    Release,
    RolloutSummary,
    parse_version,
)
from headway.domain.spec import parse_service_spec
from headway.engine.events import Command
from headway.engine.state import RolloutState
from headway.errors import NotFound, SpecError
from headway.server import configs
from headway.server import requests as r
from headway.server.auth import Role, require
from headway.server.context import ServerContext, context_of
from headway.store import NewEvent

_PARAM_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def operator(request: Request) -> str:
    require(request, Role.OPERATOR)
    return request.headers.get("x-headway-actor", "operator")[:64] or "operator"


def _ctx(request: Request) -> ServerContext:
    return context_of(request)


Actor = Annotated[str, Depends(operator)]
Ctx = Annotated[ServerContext, Depends(_ctx)]

router = APIRouter(prefix="/api/v1")


def _version(text: str) -> int:
    try:
        return parse_version(text)
    except ValueError as error:
        raise SpecError(str(error)) from None


def _service_out(ctx: ServerContext, name: str) -> ServiceOut:
    with ctx.store.tx() as tx:
        spec = tx.get_service(name)
        hosts = tx.list_hosts(name)
        current = tx.service_current_release(name)
        active = tx.active_rollout(name)  # the leader's, whichever server answers
    return ServiceOut(
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        current_release=current,
        hosts=len(hosts),
        hosts_healthy=sum(1 for h in hosts if h.connected and h.health is Health.HEALTHY),
        active_rollout=active[0].id if active is not None else None,
    )


@router.get("/services")
def list_services(ctx: Ctx, _: Actor) -> list[ServiceOut]:
    with ctx.store.tx() as tx:
        names = [s.name for s in tx.list_services()]
    return [_service_out(ctx, n) for n in names]


@router.post("/services")
def apply_service(body: ApplyService, ctx: Ctx, actor: Actor) -> ServiceOut:
    spec = parse_service_spec(body.spec)
    now = ctx.clock.now()
    with ctx.store.tx() as tx:
        created = tx.put_service(spec, now)
        tx.append_events(
            [
                NewEvent(
                    ts=now,
                    kind="service.created" if created else "service.updated",
                    message=f"service {spec.name} {'created' if created else 'updated'}",
                    service=spec.name,
                    actor=actor,
                )
            ]
        )
    ctx.runner.service_changed(spec.name)
    return _service_out(ctx, spec.name)


@router.get("/services/{name}")
def get_service(name: str, ctx: Ctx, _: Actor) -> ServiceOut:
    return _service_out(ctx, name)


@router.post("/artifacts", status_code=201)
async def upload_artifact(request: Request, ctx: Ctx, actor: Actor, digest: str | None = None) -> ArtifactRef:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            yield chunk

    ref = await ctx.artifacts.save(body(), expected=digest)
    now = ctx.clock.now()

    def record() -> None:
        with ctx.store.tx() as tx:
            tx.put_artifact(ref, str(ctx.artifacts.path_for(ref.digest)), now)
            tx.append_events(
                [
                    NewEvent(
                        ts=now,
                        kind="artifact.uploaded",
                        message=f"artifact {ref.digest} ({ref.size} bytes) uploaded",
                        actor=actor,
                    )
                ]
            )

    await run_in_threadpool(record)
    return ref


@router.get("/artifacts/{digest}")
def download_artifact(digest: str, request: Request, ctx: Ctx) -> FileResponse:
    require(request, Role.OPERATOR, Role.AGENT)
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise SpecError(f"{digest!r} is not an artifact digest", hint="use sha256:<64 hex digits>")
    with ctx.store.tx() as tx:
        _, path = tx.get_artifact(digest)
    if not Path(path).is_file():  # uploaded to a server that does not share this one's disk
        raise NotFound(
            f"artifact {digest} is recorded, but its file {path} is not on this server",
            hint="servers sharing a database must share their state directory's artifacts/ "
            "(one volume), or releases must use artifact URLs",
        )
    return FileResponse(path, media_type="application/gzip")


@router.get("/services/{name}/releases")
def list_releases(name: str, ctx: Ctx, _: Actor) -> list[Release]:
    with ctx.store.tx() as tx:
        tx.get_service(name)
        return tx.list_releases(name)


@router.post("/services/{name}/releases", status_code=201)
async def create_release(name: str, body: CreateRelease, ctx: Ctx, actor: Actor) -> Release:
    if body.artifact is not None and body.from_version is not None:
        raise SpecError(
            "give one of 'artifact' (an uploaded digest) or 'from_version', not both",
            hint="headway release create SERVICE --artifact FILE  or  --from v1 --param K=V",
        )
    if body.artifact is None and body.from_version is None and body.config is None:
        raise SpecError(
            "give 'artifact' (an uploaded digest), 'from_version' or 'config'",
            hint="headway release create SERVICE --artifact FILE, --from v1 --param K=V, or --config REV",
        )
    for key, value in body.params.items():
        if not _PARAM_KEY.match(key):
            raise SpecError(
                f"parameter name {key!r} is not allowed",
                hint="use letters, digits and '_' (at most 64), starting with a letter",
            )
        if _CONTROL.search(value) or len(value) > 4096:
            raise SpecError(f"parameter {key} has control characters or is over 4096 characters")
    if _CONTROL.sub("", body.note) != body.note:
        raise SpecError("the note has control characters")
    now = ctx.clock.now()
    with ctx.store.tx() as tx:
        tx.get_service(name)
        if body.artifact is not None:
            artifact, _ = tx.get_artifact(body.artifact)
            params = {k: v for k, v in body.params.items() if v != ""}
            config = configs.release_config(tx, name, body.config, configs.current_release(tx, name))
        else:
            # from a release, or (config alone) from the current one: a config-only release
            if body.from_version is not None:
                base = tx.get_release(name, _version(body.from_version))
            else:
                current = configs.current_release(tx, name)
                if current is None:
                    raise NotFound(
                        f"{name} has no current release to take the artifact from",
                        hint=f"create a first release: headway release create {name} --artifact FILE",
                    )
                base = current
            artifact = base.artifact
            params = {**base.params, **body.params}
            params = {k: v for k, v in params.items() if v != ""}
            config = configs.release_config(tx, name, body.config, base)
        release = tx.create_release(name, artifact, params, actor, body.note, now, config=config)
        tx.append_events(
            [
                NewEvent(
                    ts=now,
                    kind="release.created",
                    message=f"{name} v{release.number} created ({artifact.digest[:19]}…"
                    + (f", params {params}" if params else "")
                    + (f", config {config.revision}" if config else "")
                    + ")",
                    service=name,
                    actor=actor,
                )
            ]
        )
    await ctx.runner.call(r.ReleaseCreated(name, release.number))
    return release


@router.get("/services/{name}/releases/{version}")
def get_release(name: str, version: str, ctx: Ctx, _: Actor) -> Release:
    with ctx.store.tx() as tx:
        return tx.get_release(name, _version(version))


def _rollout_out(ctx: ServerContext, summary: RolloutSummary) -> RolloutOut:
    state = ctx.runner.state_of(summary.id)
    if state is None:
        with ctx.store.tx() as tx:
            summary, raw = tx.get_rollout(summary.id)
        try:
            state = RolloutState.from_dict(raw)
        except Exception:
            return RolloutOut(rollout=summary)
    hosts = [
        HostProgressOut(name=h.name, phase=h.phase.value, release=h.observed_release, detail=h.detail)
        for h in sorted(state.hosts.values(), key=lambda h: h.name)
    ]
    return RolloutOut(rollout=summary, hosts=hosts)


@router.post("/services/{name}/rollouts", status_code=201)
async def start_rollout(name: str, body: StartRollout, ctx: Ctx, actor: Actor) -> RolloutOut:
    target = _version(body.to) if body.to else None
    summary = await ctx.runner.call(r.StartRollout(name, target, actor, body.note, hotfix=body.hotfix))
    return _rollout_out(ctx, summary)


@router.post("/services/{name}/rollback")
async def rollback_service(name: str, body: OperatorAction, ctx: Ctx, actor: Actor) -> RolloutOut:
    with ctx.store.tx() as tx:
        tx.get_service(name)
    summary = await ctx.runner.call(r.ServiceRollback(name, actor, body.reason))
    return _rollout_out(ctx, summary)


@router.get("/rollouts")
def list_rollouts(
    ctx: Ctx, _: Actor, service: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[RolloutOut]:
    with ctx.store.tx() as tx:
        summaries = tx.list_rollouts(service, limit)
    return [RolloutOut(rollout=s) for s in summaries]


@router.get("/rollouts/{rollout_id}")
def get_rollout(rollout_id: str, ctx: Ctx, _: Actor) -> RolloutOut:
    with ctx.store.tx() as tx:
        summary, _state = tx.get_rollout(rollout_id)
    return _rollout_out(ctx, summary)


@router.post("/rollouts/{rollout_id}/{action}")
async def command_rollout(
    rollout_id: str, action: str, body: OperatorAction, ctx: Ctx, actor: Actor
) -> RolloutOut:
    commands = {"pause", "resume", "abort", "promote", "rollback"}
    if action not in commands:
        raise NotFound(f"no action {action!r}", hint=f"use one of {', '.join(sorted(commands))}")
    with ctx.store.tx() as tx:
        tx.get_rollout(rollout_id)
    summary = await ctx.runner.call(r.RolloutCommand(rollout_id, Command(action), actor, body.reason))
    return _rollout_out(ctx, summary)


@router.get("/hosts")
def list_hosts(ctx: Ctx, _: Actor, service: str | None = None) -> list[HostView]:
    with ctx.store.tx() as tx:
        return tx.list_hosts(service)


@router.get("/events")
def list_events(
    ctx: Ctx,
    _: Actor,
    service: str | None = None,
    rollout: str | None = None,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[Event]:
    with ctx.store.tx() as tx:
        return tx.list_events(service, rollout, after, limit)


@router.get("/cluster")
def cluster(ctx: Ctx, _: Actor) -> ClusterOut:
    """Which server leads the runner, and this server's part."""
    lease = None
    if ctx.store.shared:
        with ctx.store.tx() as tx:
            row = tx.lease()
        lease = LeaseOut(
            holder=row.holder, about=row.about, token=row.token, expires_in=row.expires_at - row.now
        )
    return ClusterOut(
        server=ctx.leadership.server_id,
        role="leader" if ctx.runner.leading else "follower",
        database=ctx.store.dialect,
        lease=lease,
    )
