"""Connected agents: one session per host, each with a coalescing outbox.

Desired state is level-triggered, so a session keeps only the newest
message to send: a slow agent never makes the server queue more than one
message for it, and never delays the others (targets T3/T4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

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

    def push(self, message: Desired, text: str | None = None) -> None:
        """Queue ``message`` (``text``: its JSON, if encoded already) unless a newer
        generation was queued already.

        Agents treat every desired message as the newest, so a stale one
        (say, the answer to a hello computed before a later change) is dropped.
        """
        if message.generation < self._generation:
            return
        self._generation = message.generation
        self._pending = text if text is not None else message.model_dump_json()
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


class DesiredEncoder:
    """The JSON of `Desired` messages, each distinct message serialised once.

    A rollout step tells a thousand hosts the same thing, but for the generation
    (per host) in each message: the first message of a kind is serialised in full
    and kept as a template split around its generation; the others that equal it
    in every other field (the service spec compared by identity first, which is
    how the runner's cache hands it out) are the template with their generation.
    """

    _HEAD = '{"type":"desired","generation":'

    def __init__(self, size: int = 64) -> None:
        self._size = size
        # (id of the spec, release number, serve) -> (message, text before and after the generation)
        self._templates: OrderedDict[tuple[int, int | None, bool], tuple[Desired, str, str]] = OrderedDict()

    def encode(self, message: Desired) -> str:
        release = message.release.number if message.release is not None else None
        key = (id(message.service), release, message.serve)
        found = self._templates.get(key)
        if found is not None:
            model, head, tail = found
            if _same_but_generation(model, message):
                return f"{head}{message.generation}{tail}"
        text = message.model_dump_json()
        number = str(message.generation)
        if text.startswith(self._HEAD + number + ","):
            # the template holds the message, so the spec it is keyed by stays alive (ids unique)
            self._templates[key] = (message, self._HEAD, text[len(self._HEAD) + len(number) :])
            self._templates.move_to_end(key)
            if len(self._templates) > self._size:
                self._templates.popitem(last=False)
        return text


def _same_but_generation(a: Desired, b: Desired) -> bool:
    """Equal in every field but the generation (dict equality tries identity first)."""
    return {**a.__dict__, "generation": 0} == {**b.__dict__, "generation": 0}


class AgentHub:
    def __init__(self) -> None:
        self.sessions: dict[str, AgentSession] = {}
        self.encoder = DesiredEncoder()

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
        session.push(message, self.encoder.encode(message))
        return True

    def __len__(self) -> int:
        return len(self.sessions)
