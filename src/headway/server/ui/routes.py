"""The web UI's routes: sign-in, the fleet, service and rollout pages, their event
stream and the operator actions. Mounted by `install_ui` under ``/ui``.

Every page and the event stream need a session (`sessions.Sessions`); without one,
pages redirect to the sign-in page and the stream answers 401. Actions also need
the session's CSRF token (form field or ``X-CSRF-Token`` header) and, when the
browser sends one, an ``Origin`` of this server. Actions go to the runner exactly as
the REST API's do, with the actor ``ui:<name>``, so the audit log says who acted.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from headway.clock import Clock
from headway.engine.events import Command
from headway.errors import HeadwayError, NotFound
from headway.server import requests as r
from headway.server.context import ServerContext, context_of
from headway.server.ui import pages
from headway.server.ui.fleet import FleetFeed
from headway.server.ui.sessions import (
    COOKIE,
    COOKIE_PATH,
    CSRF_FIELD,
    CSRF_HEADER,
    LIFETIME,
    Session,
    Sessions,
    actor_name,
    csrf_ok,
)
from headway.server.ui.stored import StoredRollouts
from headway.server.ui.views import ACTIONS, CATEGORY_LABELS, when

log = logging.getLogger("headway.ui")

HERE = Path(__file__).parent
ROLLOUT_POLL = 0.5  # seconds between looks at a rollout for its page's stream
SERVICE_POLL = 1.0
KEEPALIVE = 15.0

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class UiState:
    sessions: Sessions
    templates: Jinja2Templates
    feeds: dict[int, FleetFeed] = field(default_factory=dict)
    stored: dict[int, StoredRollouts] = field(default_factory=dict)

    def feed(self, ctx: ServerContext) -> FleetFeed:
        feed = self.feeds.get(id(ctx))
        if feed is None:  # one per server context (a test may run the app's lifespan twice)
            self.feeds.clear()
            feed = self.feeds[id(ctx)] = FleetFeed(ctx, rollouts=self.rollouts(ctx))
        return feed

    def rollouts(self, ctx: ServerContext) -> StoredRollouts:
        """The stored rollout states this server's pages share when it does not lead."""
        rollouts = self.stored.get(id(ctx))
        if rollouts is None:
            self.stored.clear()
            rollouts = self.stored[id(ctx)] = StoredRollouts(ctx.clock)
        return rollouts


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["when"] = when
    env.filters["short"] = lambda digest: str(digest).removeprefix("sha256:")[:12]
    env.globals["ACTIONS"] = ACTIONS
    env.globals["CATEGORY_LABELS"] = CATEGORY_LABELS
    return templates


def install_ui(app: FastAPI, clock: Clock) -> None:
    """Add the web UI to ``app``: routes under ``/ui`` and the static files."""
    sessions = Sessions(clock, lambda: app.state.headway.store)  # the store comes with the lifespan
    app.state.headway_ui = UiState(sessions, _templates())
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="ui-static")


router = APIRouter(prefix="/ui", include_in_schema=False)


def _ui(request: Request) -> UiState:
    ui: UiState = request.app.state.headway_ui
    return ui


def _session(request: Request) -> Session | None:
    return _ui(request).sessions.get(request.cookies.get(COOKIE))


def _to_signin(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/signin?next={quote(target, safe='')}", status_code=303)


def _page(
    request: Request, template: str, session: Session | None, status: int = 200, **data: Any
) -> Response:
    response = _ui(request).templates.TemplateResponse(
        request,
        template,
        {"session": session, "csrf": session.csrf if session else "", **data},
        status_code=status,
    )
    response.headers.update(_SECURITY_HEADERS)
    return response


def _not_found(request: Request, session: Session, error: HeadwayError) -> Response:
    return _page(request, "error.html", session, status=error.status_code, error=error)


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (first value of each)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _same_origin(request: Request) -> bool:
    """No ``Origin`` (not a browser, or an old one: SameSite=Strict still guards the cookie)
    or this server's own."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _safe_next(raw: str | None) -> str:
    target = raw or "/ui"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/ui") or target.startswith("/ui/signin"):
        return "/ui"
    return target


# ----------------------------------------------------------------- sign-in


@router.get("/signin")
def signin_page(request: Request, next: str | None = None) -> Response:
    if _session(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _page(request, "signin.html", None, next=_safe_next(next), error="")


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await _form(request)
    target = _safe_next(form.get("next"))
    if not _same_origin(request):
        refused = "cross-site sign-in refused"
        return _page(request, "signin.html", None, status=403, next=target, error=refused)
    token = form.get("token", "").strip()
    operator_token = context_of(request).tokens.api
    if not token or not hmac.compare_digest(token.encode(), operator_token.encode()):
        client = request.client.host if request.client else "?"
        log.warning("web UI sign-in refused from %s: not the operator token", client)
        return _page(
            request,
            "signin.html",
            None,
            status=401,
            next=target,
            error="That is not the operator token. It is in the server's tokens.json (\"api\"), "
            "or in HEADWAY_API_TOKEN where the server was started.",
        )
    actor = actor_name(form.get("name", ""))
    cookie, _ = _ui(request).sessions.create(actor)
    log.info("web UI: %s signed in", actor)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(LIFETIME),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    session = _session(request)
    form = await _form(request)
    if session is not None and csrf_ok(session, form.get(CSRF_FIELD)) and _same_origin(request):
        _ui(request).sessions.end(request.cookies.get(COOKIE))
        log.info("web UI: %s signed out", session.actor)
    elif session is not None:
        return JSONResponse({"error": "forbidden", "message": "bad CSRF token"}, status_code=403)
    response = RedirectResponse("/ui/signin", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


# ------------------------------------------------------------------- pages


@router.get("")
@router.get("/")
def fleet_page(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _to_signin(request)
    return _page(request, "fleet.html", session, page="fleet")


@router.get("/services/{name}")
async def service_page(request: Request, name: str) -> Response:
    session = _session(request)
    if session is None:
        return _to_signin(request)
    ctx = context_of(request)
    try:
        data = await pages.service_page(ctx, name)
    except NotFound as error:
        return _not_found(request, session, error)
    return _page(request, "service.html", session, page="service", s=data)


@router.get("/rollouts/{rollout_id}")
async def rollout_page(request: Request, rollout_id: str) -> Response:
    session = _session(request)
    if session is None:
        return _to_signin(request)
    ctx = context_of(request)
    try:
        data = await pages.rollout_page(ctx, rollout_id, _ui(request).rollouts(ctx))
    except NotFound as error:
        return _not_found(request, session, error)
    return _page(request, "rollout.html", session, page="rollout", p=data, v=data.view)


# ------------------------------------------------------------------ actions


def _problem(status: int, kind: str, message: str, hint: str = "") -> JSONResponse:
    return JSONResponse({"error": kind, "message": message, "hint": hint}, status_code=status)


async def _checked(request: Request) -> tuple[Session, dict[str, Any]] | JSONResponse:
    session = _session(request)
    if session is None:
        return _problem(401, "unauthorized", "not signed in", "sign in again at /ui/signin")
    if not _same_origin(request):
        return _problem(403, "forbidden", "cross-site request refused")
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return _problem(422, "invalid", "the body is not JSON")
    if not isinstance(body, dict):
        return _problem(422, "invalid", "the body is not a JSON object")
    if not csrf_ok(session, request.headers.get(CSRF_HEADER) or str(body.get(CSRF_FIELD, ""))):
        return _problem(403, "forbidden", "bad or missing CSRF token", "reload the page and try again")
    return session, body


def _reason(body: dict[str, Any]) -> str:
    reason = str(body.get("reason", ""))
    return "".join(ch for ch in reason if ch.isprintable())[:500]


@router.post("/actions/rollouts/{rollout_id}/{action}")
async def rollout_action(request: Request, rollout_id: str, action: str) -> JSONResponse:
    checked = await _checked(request)
    if isinstance(checked, JSONResponse):
        return checked
    session, body = checked
    if action not in ACTIONS:
        return _problem(404, "not_found", f"no action {action!r}", f"use one of {', '.join(ACTIONS)}")
    ctx = context_of(request)
    try:
        await asyncio.to_thread(_rollout_exists, ctx, rollout_id)
        summary = await ctx.runner.call(
            r.RolloutCommand(rollout_id, Command(action), session.actor, _reason(body))
        )
    except HeadwayError as error:
        return _problem(error.status_code, error.kind, error.message, error.hint)
    log.info("web UI: %s: %s %s", session.actor, action, rollout_id)
    return JSONResponse({"ok": True, "status": summary.status.value, "rollout": rollout_id})


def _rollout_exists(ctx: ServerContext, rollout_id: str) -> None:
    with ctx.store.tx() as tx:
        tx.get_rollout(rollout_id)


@router.post("/actions/services/{name}/rollback")
async def service_rollback(request: Request, name: str) -> JSONResponse:
    checked = await _checked(request)
    if isinstance(checked, JSONResponse):
        return checked
    session, body = checked
    ctx = context_of(request)
    try:
        summary = await ctx.runner.call(r.ServiceRollback(name, session.actor, _reason(body)))
    except HeadwayError as error:
        return _problem(error.status_code, error.kind, error.message, error.hint)
    log.info("web UI: %s: rollback of %s (%s)", session.actor, name, summary.id)
    return JSONResponse({"ok": True, "status": summary.status.value, "rollout": summary.id})


# ------------------------------------------------------------- event stream


def _sse(event: str, data: str, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


@router.get("/events/stream")
async def event_stream(
    request: Request, view: str = "fleet", id: str = "", name: str = "", after: int = 0
) -> Response:
    ui = _ui(request)
    session = _session(request)
    if session is None:
        return Response("not signed in\n", status_code=401, media_type="text/plain")
    ctx = context_of(request)
    if view == "fleet":
        body = _fleet_stream(ui, ctx, session)
    elif view == "rollout" and id:
        body = _rollout_stream(ui, ctx, session, id, after)
    elif view == "service" and name:
        body = _service_stream(ui, ctx, session, name)
    else:
        return Response("unknown view\n", status_code=404, media_type="text/plain")
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _fleet_stream(ui: UiState, ctx: ServerContext, session: Session) -> AsyncIterator[str]:
    feed = ui.feed(ctx)
    feed.watch()
    try:
        yield "retry: 1000\n\n"
        version: int | None = None
        quiet = 0.0
        while ui.sessions.alive(session):
            messages = feed.messages_since(version)
            if messages:
                version = feed.version
                for message in messages:
                    yield _sse("fleet", message)
                quiet = 0.0
            elif quiet >= KEEPALIVE:
                yield ": keep-alive\n\n"
                quiet = 0.0
            await feed.wait_change(version, 2.0)
            quiet += 2.0
        yield _sse("signedout", "{}")
    finally:
        feed.unwatch()


def _fragment(ui: UiState, template: str, **data: Any) -> str:
    return ui.templates.get_template(template).render(**data)


async def _rollout_stream(
    ui: UiState, ctx: ServerContext, session: Session, rollout_id: str, after: int
) -> AsyncIterator[str]:
    yield "retry: 1000\n\n"
    last_live = ""
    last_event = after
    stored: pages.Loaded | None = None
    rollouts = ui.rollouts(ctx)
    since_change = 0.0
    while ui.sessions.alive(session):
        try:
            view, stored = await pages.rollout_view_now(ctx, rollout_id, stored, rollouts)
            events = await pages.new_events(ctx, rollout_id, last_event)
        except HeadwayError as error:
            yield _sse("problem", json.dumps({"message": error.message}))
            await asyncio.sleep(2.0)
            continue
        live = _fragment(ui, "_rollout_live.html", v=view, csrf=session.csrf)
        if live != last_live:
            last_live = live
            yield _sse("swap", json.dumps({"target": "live", "html": live}))
            since_change = 0.0
        if events:
            last_event = events[-1].id
            rows = _fragment(ui, "_events.html", events=events)
            yield _sse("append", json.dumps({"target": "timeline", "html": rows, "last": last_event}))
            verdicts = [e for e in events if e.kind.startswith(("gate.", "verify."))]
            if verdicts:  # gate records are stored in the transaction that logs their verdicts
                gates = _fragment(ui, "_gates.html", gates=await pages.gates_of(ctx, rollout_id))
                yield _sse("swap", json.dumps({"target": "gates", "html": gates}))
                html = _fragment(ui, "_events.html", events=verdicts)
                yield _sse("append", json.dumps({"target": "verdicts", "html": html, "last": last_event}))
            since_change = 0.0
        if since_change >= KEEPALIVE:
            yield ": keep-alive\n\n"
            since_change = 0.0
        pause = ROLLOUT_POLL if view.live else 2.0
        await asyncio.sleep(pause)
        since_change += pause
    yield _sse("signedout", "{}")


async def _service_stream(ui: UiState, ctx: ServerContext, session: Session, name: str) -> AsyncIterator[str]:
    yield "retry: 1000\n\n"
    seen: tuple[Any, ...] | None = None
    quiet = 0.0
    while ui.sessions.alive(session):
        try:
            now = await pages.service_fingerprint(ctx, name)
        except HeadwayError as error:
            yield _sse("problem", json.dumps({"message": error.message}))
            now = seen or ()
        if seen is not None and now != seen:
            yield _sse("changed", "{}")
            quiet = 0.0
        seen = now
        if quiet >= KEEPALIVE:
            yield ": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(SERVICE_POLL)
        quiet += SERVICE_POLL
    yield _sse("signedout", "{}")
