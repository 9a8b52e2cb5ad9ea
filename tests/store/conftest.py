"""Fixtures running every store test on SQLite (in tmp_path) and on the real PostgreSQL.

Each PostgreSQL test gets a fresh schema (through ``search_path`` in the
URL) that is dropped afterwards, so tests are isolated and may run in parallel.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headway.store import Store
from headway.testing.pg import fresh_schema


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'headway.db'}"
        return
    with fresh_schema() as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated store on each backend."""
    s = Store(store_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()
