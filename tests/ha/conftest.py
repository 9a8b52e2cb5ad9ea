"""A ``cluster`` factory: servers on a fresh PostgreSQL schema, stopped after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from headway.testing.cluster import Cluster
from headway.testing.pg import fresh_schema


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(n: int, database_url: str | None = None, **options: float) -> Cluster:
        url = database_url or schema_url
        c = Cluster(tmp_path / "shared", url, options=options)
        made.append(c)
        c.start(n)
        return c

    with fresh_schema() as schema_url:
        try:
            yield make
        finally:
            for c in made:
                c.stop()
