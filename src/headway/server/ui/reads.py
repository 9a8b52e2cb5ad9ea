"""Read-only projections the UI needs and `headway.store.Tx` does not offer (yet).

`Tx.list_hosts` builds a validated `HostView` per row: about 0.3 s for 10,000
hosts, too slow to poll several times a second while holding the store's lock.
The fleet page polls six narrow columns as plain tuples (20-50 ms for 10,000) and
reads addresses and labels only now and then.
The rollout page needs the newest events first and the gate records of one
rollout (meta keys ``gate:<rollout>:<action>:<gate>``), which the store only
lists oldest first or one key at a time.
A server that does not lead reads rollout states from the store; a state is
megabytes at 10,000 hosts, so it first reads each rollout's ``updated_at``
(`rollout_stamps`) and the whole row only when that moved (`stored.StoredRollouts`).

These run inside a `Store.tx()` transaction, on its connection, and never
write. They belong in `Tx` (``host_rows()``, ``latest_events()``,
``list_meta(prefix)``); until then they live here, in one place.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from headway.domain.models import Event
from headway.store import Tx
from headway.store._schema import TERMINAL_STATUSES, events, hosts, meta, rollouts

log = logging.getLogger("headway.ui")


def _conn(tx: Tx) -> Connection:
    conn: Connection = tx._conn
    return conn


@dataclass(frozen=True, slots=True)
class HostRow:
    name: str
    service: str
    address: str
    labels: str  # JSON text, decoded only when it changes
    observed_release: int | None
    desired_release: int | None
    health: str
    connected: bool


def host_rows(tx: Tx, service: str | None = None) -> list[HostRow]:
    """Every host (or those of ``service``) as a `HostRow`, ordered by service and name."""
    query = sa.select(
        hosts.c.name,
        hosts.c.service,
        hosts.c.address,
        hosts.c.labels,
        hosts.c.observed_release,
        hosts.c.desired_release,
        hosts.c.health,
        hosts.c.connected,
    ).order_by(hosts.c.service, hosts.c.name)
    if service is not None:
        query = query.where(hosts.c.service == service)
    return [
        HostRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7])) for r in _conn(tx).execute(query)
    ]


HostState = tuple[str, str, int | None, int | None, str, bool]


def host_states(tx: Tx) -> list[HostState]:
    """``(service, name, observed release, desired release, health, connected)`` of every
    host, ordered by service and name: what the fleet page polls (20-50 ms for 10,000)."""
    query = sa.select(
        hosts.c.service,
        hosts.c.name,
        hosts.c.observed_release,
        hosts.c.desired_release,
        hosts.c.health,
        hosts.c.connected,
    ).order_by(hosts.c.service, hosts.c.name)
    return [(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in _conn(tx).execute(query)]


def host_meta(tx: Tx) -> dict[str, tuple[str, str]]:
    """``name -> (address, labels as JSON text)`` of every host: what changes rarely."""
    query = sa.select(hosts.c.name, hosts.c.address, hosts.c.labels)
    return {r[0]: (r[1], r[2]) for r in _conn(tx).execute(query)}


@dataclass(frozen=True, slots=True)
class RolloutStamp:
    """What says whether a stored rollout changed, without reading its state."""

    rollout_id: str
    service: str
    status: str
    updated_at: float


def rollout_stamps(tx: Tx, rollout_id: str | None = None) -> list[RolloutStamp]:
    """The stamp of every active rollout, oldest first; or of rollout ``rollout_id``
    whatever its status (an empty list when there is none)."""
    query = sa.select(rollouts.c.id, rollouts.c.service, rollouts.c.status, rollouts.c.updated_at)
    if rollout_id is None:
        query = query.where(rollouts.c.status.not_in(TERMINAL_STATUSES)).order_by(rollouts.c.seq)
    else:
        query = query.where(rollouts.c.id == rollout_id)
    return [RolloutStamp(r[0], r[1], r[2], float(r[3])) for r in _conn(tx).execute(query)]


def latest_events(tx: Tx, rollout_id: str, limit: int) -> list[Event]:
    """The newest ``limit`` events of a rollout, oldest first."""
    query = (
        sa.select(events)
        .where(events.c.rollout_id == rollout_id)
        .order_by(events.c.id.desc())
        .limit(limit)
    )
    rows = list(_conn(tx).execute(query))
    rows.reverse()
    return [
        Event(
            id=r.id,
            ts=r.ts,
            kind=r.kind,
            message=r.message,
            service=r.service,
            rollout_id=r.rollout_id,
            host=r.host,
            actor=r.actor,
        )
        for r in rows
    ]


def gate_records(tx: Tx, rollout_id: str) -> list[tuple[str, dict[str, Any]]]:
    """``(action id, record)`` of each gate result stored for a rollout, in key order.

    A record the verification work wrote is ``{"gate", "verdict", "explanation", "data"}``;
    one that is not JSON is skipped with a warning.
    """
    prefix = f"gate:{rollout_id}:"
    query = (
        sa.select(meta.c.key, meta.c.value)
        .where(meta.c.key.startswith(prefix, autoescape=True))
        .order_by(meta.c.key)
    )
    out: list[tuple[str, dict[str, Any]]] = []
    for key, value in _conn(tx).execute(query):
        action_id = str(key)[len(prefix) :].rsplit(":", 1)[0]
        try:
            record = json.loads(value)
        except ValueError:
            log.warning("gate record %s is not JSON; skipped", key)
            continue
        if isinstance(record, dict):
            out.append((action_id, record))
    return out
