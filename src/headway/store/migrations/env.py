"""Alembic environment: runs on the connection `Store.migrate` hands over.

`Store.migrate` opens a transaction (and, on PostgreSQL, takes an advisory
lock so that servers starting together migrate one at a time), puts the
connection in ``config.attributes["connection"]`` and calls
``alembic.command.upgrade``. Nothing here reads a file or the environment.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from headway.store._schema import metadata


def _run() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "headway's migrations run through headway.store.Store.migrate(), "
            "which passes a connection; the alembic command line is not supported"
        )
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


_run()
