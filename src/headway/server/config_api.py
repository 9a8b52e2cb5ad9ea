"""REST routes of config revisions (listed in `headway.api_models`); mounted under /api/v1."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from headway.api_models import ConfigFromUrl, ConfigPushOut, ConfigRestoreOut
from headway.domain.models import ConfigRevision, ConfigSourceKind
from headway.errors import NotFound, SpecError
from headway.server import requests as r
from headway.server.api import Actor, Ctx
from headway.server.auth import Role, require
from headway.server.config_bundle import BundleTooLarge
from headway.server.configs import ConfigFiles, config_spec_of, record_revision
from headway.server.context import ServerContext

config_router = APIRouter(prefix="/api/v1")

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
CONFIG_UPLOAD_PATH = re.compile(r"^/api/v1/services/[^/]+/configs$")  # bodies up to the artifact limit


def config_files(ctx: ServerContext) -> ConfigFiles:
    return ConfigFiles(ctx.settings.state_dir / "configs")


class BundleCache:
    """The last few small bundles served, by digest (content-addressed: never stale)."""

    def __init__(self, max_bytes: int = 32 << 20, max_item: int = 2 << 20) -> None:
        self.max_bytes = max_bytes
        self.max_item = max_item
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    def get(self, digest: str) -> bytes | None:
        data = self._items.get(digest)
        if data is not None:
            self._items.move_to_end(digest)
        return data

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > self.max_item or digest in self._items:
            return
        self._items[digest] = data
        self._size += len(data)
        while self._size > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self._size -= len(dropped)


def bundle_cache(request: Request) -> BundleCache:
    cache: BundleCache | None = getattr(request.app.state, "config_bundle_cache", None)
    if cache is None:
        cache = request.app.state.config_bundle_cache = BundleCache()
    return cache


async def _json_body(request: Request, limit: int) -> bytes:
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise BundleTooLarge(f"the request body is over {limit} bytes", hint="send {url, digest} only")
    return bytes(data)


@config_router.post("/services/{name}/configs", status_code=201)
async def push_config(name: str, request: Request, ctx: Ctx, actor: Actor) -> ConfigPushOut:
    """A new config revision: a .tar.gz body, or JSON ``{url, digest}`` to fetch one."""
    with ctx.store.tx() as tx:
        spec = tx.get_service(name)
    max_bytes = config_spec_of(spec).max_bytes
    files = config_files(ctx)
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = ConfigFromUrl.model_validate_json(await _json_body(request, ctx.settings.max_json_bytes))
        except ValidationError as error:
            where = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()
            )
            raise SpecError(
                f"invalid config source: {where}", hint='send {"url": "https://...", "digest": "sha256:..."}'
            ) from None
        bundle = await files.fetch(body.url, body.digest, max_bytes)
        source, origin = ConfigSourceKind.URL, body.url
    else:

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in request.stream():
                yield chunk

        bundle = await files.save(chunks(), max_bytes)
        source, origin = ConfigSourceKind.STORE, ""
    revision, created = await run_in_threadpool(
        record_revision,
        ctx.store,
        name,
        bundle,
        source=source,
        actor=actor,
        now=ctx.clock.now(),
        origin=origin,
    )
    return ConfigPushOut(revision=revision, created=created)


@config_router.get("/services/{name}/configs")
def list_configs(
    name: str, ctx: Ctx, _: Actor, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[ConfigRevision]:
    with ctx.store.tx() as tx:
        return tx.list_config_revisions(name, limit)


@config_router.get("/configs/{digest}")
async def download_config(digest: str, request: Request, ctx: Ctx) -> Response:
    """The bundle's bytes.

    Every agent of a batch asks at once, so small bundles are served from memory
    (`BundleCache`) and a bundle on disk by its content address, without a database
    transaction (a file is renamed into place only once checked); otherwise the store
    says where it is, or that it is unknown.
    """
    require(request, Role.OPERATOR, Role.AGENT)
    if not _DIGEST.match(digest):
        raise SpecError(f"{digest[:80]!r} is not a config digest", hint="use sha256:<64 hex digits>")
    cache = bundle_cache(request)
    data = cache.get(digest)
    if data is None:
        local = config_files(ctx).path_for(digest)
        if not local.is_file():

            def where() -> str:
                with ctx.store.tx() as tx:
                    return tx.config_revision_path(digest)

            local = Path(await run_in_threadpool(where))
            if not local.is_file():  # stored by a server that does not share this one's disk
                raise NotFound(
                    f"config bundle {digest} is recorded, but its file is not on this server",
                    hint="servers sharing a database must share their state directory "
                    "(one volume)",
                )
        if local.stat().st_size > cache.max_item:
            return FileResponse(local, media_type="application/gzip")  # streamed, not kept
        data = await run_in_threadpool(local.read_bytes)
        cache.put(digest, data)
    return Response(data, media_type="application/gzip")


@config_router.post("/services/{name}/config/restore")
async def restore_config(name: str, ctx: Ctx, actor: Actor) -> ConfigRestoreOut:
    """Drifted hosts re-apply their release's config (their desired generation goes up)."""
    hosts: list[str] = await ctx.runner.call(r.RestoreConfig(name, actor))
    return ConfigRestoreOut(service=name, hosts=hosts)
