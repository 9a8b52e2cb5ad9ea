"""`ClusterTx`: the runner's lease, its fencing token and the inbox (part of `Tx`).

Several servers may share one PostgreSQL database. One of them leads: it
holds the ``runner`` lease, whose fencing token rises by one at every change
of holder. Every transaction of the leader's runner starts with
`check_fence`, which reads the token under a share lock held to the commit:
a takeover (an update of that row) waits for the leader's open transaction,
and once it has committed, every later transaction of the deposed leader is
refused with `Fenced` before it writes anything.

The inbox carries what a server that does not lead hands to the leader:
agent reports and operator commands, as JSON, in the order they were added,
with the leader's reply for those that want one. A reply is written in the
same transaction as the request's effect, so a request takes effect once
even when the leader dies and another one picks the inbox up.

Time in leases is the database's clock (`db_now`), so servers on machines
whose clocks disagree still agree on when a lease ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from headway.errors import Fenced
from headway.store._schema import inbox, leases

RUNNER_LEASE = "runner"
_SQLITE_VARS = 500  # ids per statement on SQLite, well under its limit of bound variables


def _runs(values: Sequence[object], size: int) -> Iterator[Sequence[object]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@dataclass(frozen=True)
class Lease:
    """The row of a lease, and the database's clock when it was read."""

    holder: str  # the server id (also its connections' application_name); "" never held
    about: str  # who that is, for people: "127.0.0.1:7400 pid 4242"
    token: int
    expires_at: float
    acquired_at: float
    now: float

    @property
    def expired(self) -> bool:
        return self.expires_at <= self.now


@dataclass(frozen=True)
class HostTarget:
    """What a host's desired message is made of (`ClusterTx.host_targets`)."""

    name: str
    service: str
    desired_release: int | None
    generation: int
    serve: bool


@dataclass(frozen=True)
class InboxItem:
    id: int
    sender: str
    kind: str
    payload: str
    wants_reply: bool


class ClusterTx:
    _conn: Connection
    _postgres: bool

    # -- clock and lease -----------------------------------------------------------------

    def db_now(self) -> float:
        """Seconds since the epoch by the database's clock."""
        if self._postgres:
            query = "SELECT extract(epoch from clock_timestamp())::float8"
        else:
            query = "SELECT (julianday('now') - 2440587.5) * 86400.0"
        return float(self._conn.exec_driver_sql(query).scalar_one())

    def lease(self, name: str = RUNNER_LEASE) -> Lease:
        row = self._conn.execute(sa.select(leases).where(leases.c.name == name)).one()
        return Lease(row.holder, row.about, int(row.token), row.expires_at, row.acquired_at, self.db_now())

    def check_fence(self, token: int, name: str = RUNNER_LEASE) -> None:
        """Refuse this transaction unless ``token`` is still the lease's token.

        On PostgreSQL the row stays share-locked until the transaction ends, so
        the holder cannot change while it writes (a takeover waits for it).
        """
        query = sa.select(leases.c.token, leases.c.about).where(leases.c.name == name)
        if self._postgres:
            query = query.with_for_update(read=True)
        row = self._conn.execute(query).one()
        if int(row.token) != token:
            raise Fenced(
                f"this server's lease (token {token}) has ended; {row.about or 'another server'} "
                f"leads with token {row.token}, so the write was refused",
                hint="nothing was written; this server now follows and hands requests to the leader",
            )

    def take_lease(self, holder: str, about: str, ttl: float, name: str = RUNNER_LEASE) -> int:
        """Become the holder: the token rises by one. Call it holding the election lock."""
        now = self.db_now()
        token = self._conn.execute(
            sa.update(leases)
            .where(leases.c.name == name)
            .values(
                token=leases.c.token + 1,
                holder=holder,
                about=about,
                expires_at=now + ttl,
                acquired_at=now,
            )
            .returning(leases.c.token)
        ).scalar_one()
        return int(token)

    def renew_lease(self, token: int, ttl: float, name: str = RUNNER_LEASE) -> bool:
        """Extend the lease if ``token`` still holds it; False: it was taken over."""
        result = self._conn.execute(
            sa.update(leases)
            .where(leases.c.name == name, leases.c.token == token)
            .values(expires_at=self.db_now() + ttl)
        )
        return result.rowcount == 1

    def end_lease(self, token: int, name: str = RUNNER_LEASE) -> None:
        """Give the lease up now (a clean stop), so another server need not wait for it."""
        self._conn.execute(
            sa.update(leases).where(leases.c.name == name, leases.c.token == token).values(expires_at=0.0)
        )

    # -- inbox ---------------------------------------------------------------------------

    def add_inbox(
        self, sender: str, items: Sequence[tuple[str, str, bool]], now: float
    ) -> list[int]:
        """Queue ``(kind, payload, wants_reply)`` requests in order, in one statement; the
        ids of those that want a reply, in order."""
        if not items:
            return []
        rows = [
            {
                "sender": sender,
                "kind": kind,
                "payload": payload,
                "wants_reply": wants_reply,
                "done": False,
                "created_at": now,
            }
            for kind, payload, wants_reply in items
        ]
        if not any(wants_reply for _, _, wants_reply in items):
            self._conn.execute(sa.insert(inbox), rows)
            return []
        # ids rise in the order of the rows (the leader reads the inbox in id order), and
        # come back in that order
        result = self._conn.execute(
            sa.insert(inbox).returning(inbox.c.id, sort_by_parameter_order=True), rows
        )
        ids = [int(row[0]) for row in result]
        return [i for i, (_, _, wants_reply) in zip(ids, items, strict=True) if wants_reply]

    def pending_inbox(self, limit: int = 5000) -> list[InboxItem]:
        rows = self._conn.execute(
            sa.select(inbox.c.id, inbox.c.sender, inbox.c.kind, inbox.c.payload, inbox.c.wants_reply)
            .where(inbox.c.done == sa.false())
            .order_by(inbox.c.id)
            .limit(limit)
        )
        return [InboxItem(int(r.id), r.sender, r.kind, r.payload, bool(r.wants_reply)) for r in rows]

    def pending_inbox_ids(self, limit: int = 5000) -> list[int]:
        """The ids of the requests not yet handled, in order (no payloads: the leader reads
        those only for requests it has not taken yet, `inbox_items`)."""
        false = "false" if self._postgres else "0"
        rows = self._conn.exec_driver_sql(
            f"SELECT id FROM inbox WHERE done = {false} ORDER BY id LIMIT {int(limit)}"
        )
        return [int(r[0]) for r in rows]

    def inbox_items(self, ids: Sequence[int]) -> list[InboxItem]:
        """The requests ``ids`` still not handled, in order."""
        found: list[InboxItem] = []
        columns = "id, sender, kind, payload, wants_reply"
        for run, where in self._id_runs(ids):
            rows = self._conn.exec_driver_sql(f"SELECT {columns} FROM inbox WHERE {where}", run)
            found.extend(InboxItem(int(r[0]), r[1], r[2], r[3], bool(r[4])) for r in rows)
        return sorted(found, key=lambda item: item.id)

    def answer_inbox(self, answers: Sequence[tuple[int, str | None]]) -> None:
        """Requests handled: a reply is kept for its sender to take; no reply, the row goes."""
        replies = [(r, i) for i, r in answers if r is not None]
        gone = [i for i, r in answers if r is None]
        if replies:
            true, mark = ("true", "%s") if self._postgres else ("1", "?")
            self._conn.exec_driver_sql(
                f"UPDATE inbox SET done = {true}, reply = {mark} WHERE id = {mark}", replies
            )
        for run, where in self._id_runs(gone):
            self._conn.exec_driver_sql(f"DELETE FROM inbox WHERE {where}", run)

    def take_replies(self, ids: Sequence[int]) -> dict[int, str]:
        """The replies ready among ``ids``; taken: their rows are deleted."""
        found: dict[int, str] = {}
        true = "true" if self._postgres else "1"
        for run, where in self._id_runs(ids):
            rows = self._conn.exec_driver_sql(
                f"DELETE FROM inbox WHERE {where} AND done = {true} RETURNING id, reply", run
            )
            found.update((int(r[0]), r[1] or "") for r in rows)
        return found

    def _id_runs(self, ids: Sequence[int]) -> Iterator[tuple[tuple[object, ...], str]]:
        """(parameters, WHERE clause) per statement for a set of ids: one ``= ANY`` array
        on PostgreSQL, runs of ``IN (?, ...)`` on SQLite. Nothing for no ids."""
        if not ids:
            return
        if self._postgres:
            yield (list(ids),), "id = ANY(%s)"
            return
        for run in _runs(ids, _SQLITE_VARS):
            yield tuple(run), f"id IN ({','.join('?' * len(run))})"

    def withdraw_inbox(self, request_id: int) -> bool:
        """Take back a request no leader has handled; False: it was handled (take its reply)."""
        result = self._conn.execute(
            sa.delete(inbox).where(inbox.c.id == request_id, inbox.c.done == sa.false())
        )
        return result.rowcount == 1

    def purge_inbox(self, older_than: float) -> int:
        """Drop replies nobody took (their sender died) from before ``older_than``."""
        result = self._conn.execute(
            sa.delete(inbox).where(inbox.c.done == sa.true(), inbox.c.created_at < older_than)
        )
        return int(result.rowcount)

    # -- what followers push ---------------------------------------------------------------

    def host_targets(self, names: Sequence[str]) -> dict[str, HostTarget]:
        """The desired state of the hosts ``names`` that exist, read in one statement."""
        found: dict[str, HostTarget] = {}
        columns = "name, service, desired_release, generation, serve"
        if self._postgres:
            runs: list[tuple[tuple[object, ...], str]] = [((list(names),), "name = ANY(%s)")] if names else []
        else:
            runs = [
                (tuple(run), f"name IN ({','.join('?' * len(run))})") for run in _runs(names, _SQLITE_VARS)
            ]
        for params, where in runs:
            for r in self._conn.exec_driver_sql(f"SELECT {columns} FROM hosts WHERE {where}", params):
                found[r[0]] = HostTarget(r[0], r[1], r[2], int(r[3]), bool(r[4]))
        return found

    def hosts_behind(self) -> list[tuple[str, int]]:
        """(name, generation) of the hosts whose stored generation is ahead of the one
        their agent last reported."""
        rows = self._conn.exec_driver_sql(
            "SELECT name, generation FROM hosts WHERE generation > observed_generation ORDER BY name"
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    # -- notifications -------------------------------------------------------------------

    def notify(self, topic: str, payload: str = "") -> None:
        """Tell the other servers (PostgreSQL NOTIFY, delivered at commit); a no-op on SQLite.

        The channel is ``headway.<schema>.<topic>``, so databases shared by several
        installations (one schema each) do not hear each other.
        """
        if self._postgres:
            self._conn.execute(
                sa.text("SELECT pg_notify('headway.' || current_schema() || '.' || :topic, :payload)"),
                {"topic": topic, "payload": payload},
            )


def channel_name(schema: str, topic: str) -> str:
    """The PostgreSQL channel `ClusterTx.notify` uses for ``topic`` in ``schema``."""
    return f"headway.{schema}.{topic}"
