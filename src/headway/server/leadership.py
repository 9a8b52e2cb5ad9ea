"""Who runs the rollout runner: one leader among the servers sharing a database.

    Leadership                 what the runner asks: leading? with which fencing token?
    ├── SoloLeadership         SQLite: one server, always the leader, no token
    └── PostgresElection       PostgreSQL: advisory lock + lease + fencing token

`PostgresElection` keeps one session of its own (outside the pool) and, every
``ttl / 4`` seconds:

- as a candidate, tries ``pg_try_advisory_lock``. The lock belongs to the
  session, so it frees itself the moment a leader's process dies (SIGKILL:
  the kernel closes its sockets) and the next candidate takes over within one
  period. Holding the lock, it takes the ``runner`` lease: the fencing token
  rises by one (`ClusterTx.take_lease`).
  If the lock is held but the lease has expired by the database's clock, the
  holder is alive but silent (SIGSTOP, a long pause, a hung host): the
  candidate ends every session of that server (``pg_terminate_backend`` on
  the sessions named after it), which frees the lock and rolls back any
  transaction it had open; it takes over on its next try.
- as the leader, renews the lease (only while the token is still its own).
  A renewal that fails or finds the token moved deposes it. So does not having
  renewed for ``ttl``: by then another server may lead.

Safety does not rest on timing: every transaction of the runner checks the
token first (`Store.tx(fence=...)`), so a deposed leader that wakes up and
writes is refused by the store (`Fenced`) before it changes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import psycopg

from headway.clock import Clock
from headway.errors import StoreUnavailable
from headway.store import Store

log = logging.getLogger("headway.leadership")

ELECTION_LOCK = 0x68_77_00_01  # first key of pg_try_advisory_lock(int, int); the second: the schema
DEFAULT_TTL = 10.0


def new_server_id() -> str:
    """A name for this server process, also its database sessions' ``application_name``."""
    return f"headway-{uuid.uuid4().hex[:12]}"


def describe_server(listen: str) -> str:
    return f"{listen} on {socket.gethostname()} pid {os.getpid()}"


class Leadership(Protocol):
    server_id: str

    @property
    def token(self) -> int | None:
        """The fencing token while leading (None: not leading, or no fencing needed)."""

    @property
    def leading(self) -> bool: ...

    def subscribe(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` (on the event loop) whenever ``leading`` or ``token`` changes."""

    async def run(self) -> None:
        """Take part in the election until cancelled."""

    def step_down(self, reason: str) -> None:
        """The runner found it was fenced: stop leading now, run again later."""


class SoloLeadership:
    """The only server of an SQLite database leads from the start, without a token."""

    def __init__(self, server_id: str = "solo") -> None:
        self.server_id = server_id
        self._listeners: list[Callable[[], None]] = []

    @property
    def token(self) -> int | None:
        return None

    @property
    def leading(self) -> bool:
        return True

    def subscribe(self, on_change: Callable[[], None]) -> None:
        self._listeners.append(on_change)

    async def run(self) -> None:
        for listener in self._listeners:
            listener()
        await asyncio.Event().wait()

    def step_down(self, reason: str) -> None:  # pragma: no cover - a solo server is never fenced
        log.error("solo server told to step down (%s); it keeps leading", reason)


class PostgresElection:
    def __init__(
        self,
        store: Store,
        server_id: str,
        about: str,
        clock: Clock,
        *,
        ttl: float = DEFAULT_TTL,
    ) -> None:
        self.store = store
        self.server_id = server_id
        self.about = about
        self.clock = clock
        self.ttl = ttl
        self._token: int | None = None
        self._renewed_at = 0.0  # monotonic, last successful take or renewal
        self._session: psycopg.Connection[Any] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._last_problem = ""

    @property
    def token(self) -> int | None:
        return self._token

    @property
    def leading(self) -> bool:
        return self._token is not None

    def subscribe(self, on_change: Callable[[], None]) -> None:
        self._listeners.append(on_change)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    async def run(self) -> None:
        try:
            while True:
                await self._once()
                await asyncio.sleep(self.ttl / 4)
        finally:
            token = self._token
            if token is not None:
                self._token = None
                await asyncio.to_thread(self._give_up, token)
            self._close_session()

    async def _once(self) -> None:
        token = self._token
        try:
            if token is None:
                taken = await asyncio.to_thread(self._try_to_lead)
                if taken is not None:
                    self._token, self._renewed_at = taken, self.clock.monotonic()
                    log.warning("this server (%s) leads now, fencing token %d", self.about, taken)
                    self._changed()
            elif await asyncio.to_thread(self._renew, token):
                self._renewed_at = self.clock.monotonic()
            else:
                self._depose("another server took the lease over")
            self._last_problem = ""
        except (psycopg.Error, StoreUnavailable) as error:
            self._close_session()
            problem = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if problem != self._last_problem:
                log.error("election: the database cannot be used (%s); retrying", problem)
                self._last_problem = problem
            if self._token is not None:
                self._depose(f"the session holding the lease broke ({problem})")
        except Exception:  # a bug must not end the election: log it, stand down, go on
            log.exception("election step failed")
            self._close_session()
            if self._token is not None:
                self._depose("the election step failed")
        if self._token is not None and self.clock.monotonic() - self._renewed_at > self.ttl:
            self._depose(f"the lease was not renewed for {self.ttl:g}s")

    def step_down(self, reason: str) -> None:
        if self._token is not None:
            self._depose(reason)

    def _depose(self, reason: str) -> None:
        log.warning("this server no longer leads (token %s): %s", self._token, reason)
        self._token = None
        self._close_session()  # frees the advisory lock if the session still stands
        self._changed()

    # ---------------------------------------------------------------- database (in a thread)

    def _connect(self) -> psycopg.Connection[Any]:
        if self._session is None or self._session.closed:
            params = self.store.libpq_params()
            params["application_name"] = self.server_id
            self._session = psycopg.connect(autocommit=True, **params)
            statement_ms = int(self.ttl * 1000 / 2)
            self._session.execute(f"SET statement_timeout = {statement_ms}")
        return self._session

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            with contextlib.suppress(psycopg.Error):
                session.close()

    def _try_to_lead(self) -> int | None:
        session = self._connect()
        got = session.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))", (ELECTION_LOCK,)
        ).fetchone()
        if got is not None and got[0]:
            with self.store.tx() as tx:  # holding the lock, this server takes the lease
                return tx.take_lease(self.server_id, self.about, self.ttl)
        with self.store.tx() as tx:
            lease = tx.lease()
        if lease.holder and lease.holder != self.server_id and lease.expired:
            ended = session.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s",
                (lease.holder,),
            ).fetchone()
            log.warning(
                "the lease of %s expired %.1fs ago while it still holds the election lock; "
                "ended its %d database session(s) so that its writes stop",
                lease.about or lease.holder,
                lease.now - lease.expires_at,
                ended[0] if ended else 0,
            )
        return None

    def _renew(self, token: int) -> bool:
        with self.store.tx() as tx:
            return tx.renew_lease(token, self.ttl)

    def _give_up(self, token: int) -> None:
        """A clean stop: end the lease now so that another server takes over at once."""
        try:
            with self.store.tx() as tx:
                tx.end_lease(token)
        except Exception as error:  # stopping anyway; the lease will expire
            log.warning("could not end the lease on stop: %s", error)
