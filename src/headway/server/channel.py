"""The agent channel: one WebSocket per agent (protocol in `headway.protocol.messages`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from headway.domain.spec import check_name
from headway.errors import HeadwayError
from headway.protocol.messages import ErrorMessage, Hello, Report, Welcome, agent_message
from headway.server import requests as r
from headway.server.auth import Role, role_of
from headway.server.context import context_of
from headway.server.hub import AgentSession

log = logging.getLogger("headway.channel")

HELLO_TIMEOUT = 10.0


async def agent_channel(websocket: WebSocket) -> None:
    ctx = context_of(websocket)
    if role_of(websocket) is not Role.AGENT:
        log.warning("agent channel refused: bad or missing agent token")
        await websocket.close(code=1008)
        return
    await websocket.accept()
    try:
        raw = await asyncio.wait_for(websocket.receive_text(), HELLO_TIMEOUT)
        hello = agent_message.validate_json(raw)
        if not isinstance(hello, Hello):
            raise ValueError("the first message must be 'hello'")
        check_name(hello.host, "host name")
        service = hello.labels.get("service", "")
        if not service:
            raise ValueError("the agent needs a 'service' label (headway agent --label service=NAME)")
    except (ValidationError, ValueError, TimeoutError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        with contextlib.suppress(Exception):
            await websocket.send_text(ErrorMessage(message=f"bad hello: {problem}").model_dump_json())
            await websocket.close(code=1008)
        return
    except WebSocketDisconnect:
        return
    await ctx.runner.accepting()
    session = AgentSession(hello.host, websocket)
    await ctx.hub.attach(session)
    writer: asyncio.Task[None] | None = None
    try:
        # the runner pushes the host's desired state into the session after its commit
        await ctx.runner.call(
            r.HostHello(hello.host, service, hello.address, dict(hello.labels), hello.observed)
        )
        await websocket.send_text(
            Welcome(host=hello.host, heartbeat=ctx.settings.heartbeat).model_dump_json()
        )
        writer = asyncio.create_task(session.writer())
        while True:
            frame = await websocket.receive_text()
            try:
                message = agent_message.validate_json(frame)
            except ValidationError as error:
                log.warning("host %s sent a malformed message: %s", hello.host, error.errors()[0])
                continue
            if isinstance(message, Report):
                ctx.runner.submit(r.HostReport(hello.host, message.observed))
    except WebSocketDisconnect:
        pass
    except HeadwayError as error:
        log.error("host %s: %s", hello.host, error)
    finally:
        session.closed = True
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
        if ctx.hub.detach(session):
            ctx.runner.submit(r.HostGone(hello.host))
