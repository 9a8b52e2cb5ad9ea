"""What servers sharing a PostgreSQL database tell each other (LISTEN/NOTIFY).

    topic     sent by                     payload          the listener
    inbox     a follower, with requests   -                wakes the leader's inbox pump
    reply     the leader, having answered request ids      hands followers their replies
                                          (comma-separated)
    desired   the leader, after a batch   host names       pushes to agents connected here
    service   any server, spec stored     service name     forgets the cached spec

A notification can be lost while this session reconnects; so on every
(re)connect the listener acts as if each topic had fired for everything,
and every ``resync_every`` seconds it looks again for what a lost one missed
(`NoticeHandlers.quiet`: a follower's agents whose stored generation is
ahead of what they reported).
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
# the listening session notices a database that went away silently within ~11 s
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}


@dataclass
class NoticeHandlers:
    inbox: Callable[[], None]
    reply: Callable[[list[int] | None], None]  # the ids answered; None: look for all
    desired: Callable[[list[str] | None], None]  # None: every host connected here
    service: Callable[[str | None], None]  # None: every service
    quiet: Callable[[], None]  # every few seconds: look for what a lost notification missed


class NoticeListener:
    def __init__(self, store: Store, handlers: NoticeHandlers, *, resync_every: float = 5.0) -> None:
        self.store = store
        self.handlers = handlers
        self.resync_every = resync_every
        self.connected = asyncio.Event()

    async def run(self) -> None:
        sweeper = asyncio.create_task(self._sweep())
        problem = ""
        try:
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
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _listen(self) -> None:
        params: dict[str, Any] = {**self.store.libpq_params(), **KEEPALIVES}
        schema = await asyncio.to_thread(self.store.schema)
        channels = {channel_name(schema, topic): topic for topic in TOPICS}
        conn = await psycopg.AsyncConnection.connect(autocommit=True, **params)
        async with conn:
            for channel in channels:
                await conn.execute(f'LISTEN "{channel}"')
            self.connected.set()
            self._everything()  # whatever was sent while this session was away
            # One generator for the session's life: between two generators a notification
            # can be lost (psycopg #962). A dead peer ends it through the TCP keepalives.
            async for notice in conn.notifies():
                self._dispatch(channels.get(notice.channel, ""), notice.payload)

    async def _sweep(self) -> None:
        """Every few seconds, whatever a lost notification may have missed."""
        while True:
            await asyncio.sleep(self.resync_every)
            self._everything(idle=True)

    def _dispatch(self, topic: str, payload: str) -> None:
        handlers = self.handlers
        with _logged(topic):
            if topic == "inbox":
                handlers.inbox()
            elif topic == "reply":
                handlers.reply(_ids(payload))
            elif topic == "desired":
                handlers.desired([h for h in payload.split(",") if h])
            elif topic == "service":
                handlers.service(payload or None)

    def _everything(self, idle: bool = False) -> None:
        with _logged("resync"):
            self.handlers.inbox()
            self.handlers.reply(None)
            if idle:
                self.handlers.quiet()
            else:
                self.handlers.desired(None)
                self.handlers.service(None)


def _ids(payload: str) -> list[int] | None:
    """The request ids a reply notice names; None (look for every one) if it names none
    or cannot be read."""
    try:
        ids = [int(part) for part in payload.split(",") if part]
    except ValueError:
        return None
    return ids or None


@contextlib.contextmanager
def _logged(topic: str) -> Any:
    try:
        yield
    except Exception:  # a handler's bug must not stop the listener
        log.exception("handling a %r notification failed", topic)
