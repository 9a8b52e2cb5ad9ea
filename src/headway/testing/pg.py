"""A fresh, empty PostgreSQL schema for a test or a benchmark, dropped afterwards.

The schema is reached through ``search_path`` in the URL, so every
connection of every server process started with that URL lands in it, and
several tests may share one database at once.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import sqlalchemy as sa

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def fresh_schema(base_url: str = POSTGRES_URL, prefix: str = "hw_test") -> Iterator[str]:
    """Yield a database URL whose tables live in a new schema of ``base_url``'s database."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        yield f"{base_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql("SET lock_timeout = '20s'")  # a stopped server's session may linger
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()
