"""Persistence of Headway's state: SQLite (embedded) or PostgreSQL (HA).

    store = Store("sqlite:////var/lib/headway/state.db")
    store.migrate()
    with store.tx() as tx:
        tx.put_service(spec, now)

`Store.tx` gives a `Tx`, one transaction holding every read and write
(services, artifacts, releases, hosts, rollouts, events, outbox, meta).
The schema is managed by the Alembic migrations shipped in
``headway/store/migrations``; `Store.migrate` runs them, no alembic.ini needed.
"""

from headway.store._store import Store
from headway.store._tx import CorruptRecord, Tx
from headway.store._types import HostObservation, NewEvent, OutboxItem

__all__ = ["CorruptRecord", "HostObservation", "NewEvent", "OutboxItem", "Store", "Tx"]
