"""What servers sharing a PostgreSQL database tell each other (LISTEN/NOTIFY).

    topic     sent by                     payload          the listener
    inbox     a follower, with requests   -                wakes the leader's inbox pump
    reply     the leader, having answered request ids      hands followers their replies
    desired   the leader, after a batch   host names       pushes to agents connected here
    service   any server, spec stored     service name     forgets the cached spec

A notification can be lost while this session reconnects; so on every
(re)connect the listener also acts as if each topic had fired for
everything, and the senders' receivers poll as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from headway.store import Store
from headway.store._tx_cluster import channel_name

log = logging.getLogger("headway.notices")

TOPICS = ("inbox", "reply", "desired", "service")


@dataclass
class NoticeHandlers:
    inbox: Callable[[], None]
    reply: Callable[[], None]
    desired: Callable[[list[str] | None], None]  # None: every host connected here
    service: Callable[[str | None], None]  # None: every service
    quiet: Callable[[], None]  # nothing heard for a while: look for what a lost notice missed


class NoticeListener:
    def __init__(self, store: Store, handlers: NoticeHandlers, *, resync_every: float = 5.0) -> None:
        self.store = store
        self.handlers = handlers
        self.resync_every = resync_every
        self.connected = asyncio.Event()

    async def run(self) -> None:
        problem = ""
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError) as error:
                text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                if text != problem:
                    log.error("notifications from the other servers stopped (%s); reconnecting", text)
                    problem = text
            self.connected.clear()
            await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        params: dict[str, Any] = self.store.libpq_params()
        schema = await asyncio.to_thread(self.store.schema)
        channels = {channel_name(schema, topic): topic for topic in TOPICS}
        conn = await psycopg.AsyncConnection.connect(autocommit=True, **params)
        async with conn:
            for channel in channels:
                await conn.execute(f'LISTEN "{channel}"')
            self.connected.set()
            self._everything()  # whatever was sent while this session was away
            gen = conn.notifies(timeout=self.resync_every)
            while True:
                async for notice in gen:
                    self._dispatch(channels.get(notice.channel, ""), notice.payload)
                # the timeout passed quietly: make sure the session is alive, resync
                await conn.execute("SELECT 1")
                self._everything(idle=True)
                gen = conn.notifies(timeout=self.resync_every)

    def _dispatch(self, topic: str, payload: str) -> None:
        handlers = self.handlers
        with _logged(topic):
            if topic == "inbox":
                handlers.inbox()
            elif topic == "reply":
                handlers.reply()
            elif topic == "desired":
                handlers.desired([h for h in payload.split(",") if h])
            elif topic == "service":
                handlers.service(payload or None)

    def _everything(self, idle: bool = False) -> None:
        with _logged("resync"):
            self.handlers.inbox()
            self.handlers.reply()
            if idle:
                self.handlers.quiet()
            else:
                self.handlers.desired(None)
                self.handlers.service(None)


@contextlib.contextmanager
def _logged(topic: str) -> Any:
    try:
        yield
    except Exception:  # a handler's bug must not stop the listener
        log.exception("handling a %r notification failed", topic)
