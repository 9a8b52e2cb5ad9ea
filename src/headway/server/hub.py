"""Connected agents: one session per host, each with a coalescing outbox.

Desired state is level-triggered, so a session keeps only the newest
message to send: a slow agent never makes the server queue more than one
message for it, and never delays the others (targets T3/T4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket

from headway.protocol.messages import Desired

log = logging.getLogger("headway.hub")


class AgentSession:
    def __init__(self, host: str, websocket: WebSocket) -> None:
        self.host = host
        self.websocket = websocket
        self._pending: str | None = None
        self._wake = asyncio.Event()
        self._generation = -1
        self.closed = False

    def push(self, message: Desired) -> None:
        """Queue ``message`` unless a newer generation was queued already.

        Agents treat every desired message as the newest, so a stale one
        (say, the answer to a hello computed before a later change) is dropped.
        """
        if message.generation < self._generation:
            return
        self._generation = message.generation
        self._pending = message.model_dump_json()
        self._wake.set()

    async def writer(self) -> None:
        """Send the newest pending message whenever there is one, until closed."""
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            payload, self._pending = self._pending, None
            if payload is not None:
                await self.websocket.send_text(payload)

    async def close(self) -> None:
        self.closed = True
        self._wake.set()
        with contextlib.suppress(Exception):
            await self.websocket.close(code=1012)  # service restart / replaced


class AgentHub:
    def __init__(self) -> None:
        self.sessions: dict[str, AgentSession] = {}

    async def attach(self, session: AgentSession) -> None:
        old = self.sessions.get(session.host)
        self.sessions[session.host] = session
        if old is not None and old is not session:
            log.info("host %s reconnected; closing its previous session", session.host)
            await old.close()

    def detach(self, session: AgentSession) -> bool:
        """Forget the session; False if a newer one has replaced it already."""
        if self.sessions.get(session.host) is session:
            del self.sessions[session.host]
            return True
        return False

    def push(self, host: str, message: Desired) -> bool:
        session = self.sessions.get(host)
        if session is None:
            return False
        session.push(message)
        return True

    def __len__(self) -> int:
        return len(self.sessions)
