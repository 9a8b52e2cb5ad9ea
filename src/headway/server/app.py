"""`create_app(settings) -> ASGI app`. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import headway
from headway.clock import Clock, SystemClock
from headway.errors import HeadwayError
from headway.protocol.messages import CHANNEL_PATH
from headway.server.api import router
from headway.server.artifacts import ArtifactFiles
from headway.server.channel import agent_channel
from headway.server.config_api import CONFIG_UPLOAD_PATH, config_router
from headway.server.config_git import start_config_follower
from headway.server.context import ServerContext
from headway.server.forwarding import Forwarder
from headway.server.gates import GateRunner
from headway.server.hub import AgentHub
from headway.server.leadership import (
    Leadership,
    PostgresElection,
    SoloLeadership,
    describe_server,
    new_server_id,
)
from headway.server.notices import NoticeHandlers, NoticeListener
from headway.server.requests import TrafficResult, VerificationResult
from headway.server.runner import Runner
from headway.server.settings import ServerSettings, load_or_create_tokens
from headway.server.traffic_driver import TrafficDriver
from headway.server.traffic_loop import reconcile_forever
from headway.server.ui import install_ui
from headway.server.verification import Verifier
from headway.store import Store

log = logging.getLogger("headway.server")


class BodyLimit:
    """Refuse request bodies over the limit (413) before a handler reads them."""

    def __init__(self, app: ASGIApp, json_limit: int, artifact_limit: int) -> None:
        self.app = app
        self.json_limit = json_limit
        self.artifact_limit = artifact_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bulk = scope["path"] == "/api/v1/artifacts" or CONFIG_UPLOAD_PATH.match(scope["path"])
        limit = self.artifact_limit if bulk else self.json_limit  # config uploads: checked again there
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _problem(413, "too_large", f"the request body is over {limit} bytes")(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _problem(413, "too_large", f"the request body is over {limit} bytes")(scope, receive, send)


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body over {limit} bytes")


def _problem(status: int, kind: str, message: str, hint: str = "") -> JSONResponse:
    return JSONResponse({"error": kind, "message": message, "hint": hint}, status_code=status)


def create_app(
    settings: ServerSettings, *, clock: Clock | None = None, store: Store | None = None
) -> FastAPI:
    clock = clock or SystemClock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        server_id = new_server_id()
        the_store = store or Store(settings.db_url, application_name=server_id)
        the_store.migrate()
        hub = AgentHub()
        leadership: Leadership
        forwarder: Forwarder | None = None
        if the_store.shared:  # PostgreSQL: other servers may share it; elect a leader
            leadership = PostgresElection(
                the_store,
                server_id,
                describe_server(f"{settings.host}:{settings.port}"),
                clock,
                ttl=settings.lease_ttl,
            )
            forwarder = Forwarder(the_store, server_id, clock)
        else:
            leadership = SoloLeadership(server_id)
        runner_box: list[Runner] = []
        driver = TrafficDriver(
            lambda outcome: runner_box[0].submit(TrafficResult(outcome)), clock, random.Random()
        )
        verifier = Verifier(
            GateRunner(clock, random.Random(), driver.backend_for),
            lambda outcome: runner_box[0].submit(VerificationResult(outcome)),
        )
        runner = Runner(
            the_store,
            hub,
            clock,
            reconnect_grace=settings.reconnect_grace,
            traffic=driver,
            verifier=verifier,
            leadership=leadership,
            forwarder=forwarder,
        )
        runner_box.append(runner)
        app.state.headway = ServerContext(
            settings=settings,
            store=the_store,
            runner=runner,
            hub=hub,
            artifacts=ArtifactFiles(settings.artifact_dir, settings.max_artifact_bytes),
            tokens=load_or_create_tokens(settings),
            clock=clock,
            leadership=leadership,
        )
        task = asyncio.create_task(runner.run(), name="headway-runner")
        cluster_tasks = []
        if forwarder is not None:
            listener = NoticeListener(
                the_store,
                NoticeHandlers(
                    inbox=runner.inbox_arrived,
                    reply=forwarder.take_replies,
                    desired=runner.push_local,
                    service=lambda name: runner.forget_service_spec(name) if name else runner.forget_all(),
                    quiet=runner.push_stale,
                ),
            )
            cluster_tasks = [
                asyncio.create_task(listener.run(), name="headway-notices"),
                asyncio.create_task(forwarder.run(), name="headway-replies"),
            ]
        election = asyncio.create_task(leadership.run(), name="headway-election")
        traffic_task = asyncio.create_task(reconcile_forever(runner, driver, clock), name="headway-traffic")
        config_task = start_config_follower(the_store, runner, clock, settings.state_dir)
        log.info("headway server ready (database %s)", settings.db_url.split("@")[-1])
        try:
            yield
        finally:
            for background in (config_task, traffic_task, *cluster_tasks, task, election):
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
            for session in list(hub.sessions.values()):
                await session.close()
            the_store.close()

    app = FastAPI(
        title="Headway",
        version=headway.__version__,
        summary="Upgrade fleets of servers with no downtime, verification and rollback.",
        lifespan=lifespan,
    )

    @app.exception_handler(HeadwayError)
    async def headway_error(request: Request, error: HeadwayError) -> JSONResponse:
        return _problem(error.status_code, error.kind, error.message, error.hint)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        parts = []
        for item in error.errors():
            where = ".".join(str(p) for p in item["loc"] if p != "body") or "body"
            message = str(item["msg"]).removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "unknown field"
            parts.append(f"{where}: {message}")
        return _problem(422, "invalid", "; ".join(parts), "fix the fields named; see GET /docs for the API")

    @app.get("/healthz", include_in_schema=False)
    def healthz(request: Request) -> dict[str, str]:
        ctx = getattr(request.app.state, "headway", None)
        role = "starting" if ctx is None else ("leader" if ctx.runner.leading else "follower")
        return {"status": "ok", "version": headway.__version__, "role": role}

    app.include_router(router)
    app.include_router(config_router)
    install_ui(app, clock)
    app.add_api_websocket_route(CHANNEL_PATH, agent_channel)
    app.add_middleware(
        BodyLimit,
        json_limit=settings.max_json_bytes,
        artifact_limit=settings.max_artifact_bytes,
    )
    return app
