"""What differs per backend: SQLite's settings, URLs, and an unreachable database."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from headway.errors import SpecError, StoreUnavailable
from headway.store import NewEvent, Store


def test_sqlite_runs_in_wal_with_full_sync_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.db"
    store = Store(f"sqlite:///{path}")
    try:
        store.migrate()
        assert path.exists()
        with store.engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        assert pragma == {
            "journal_mode": "wal",
            "synchronous": 2,
            "foreign_keys": 1,
            "busy_timeout": 10_000,
        }
    finally:
        store.close()


def test_in_memory_sqlite_is_shared_by_threads() -> None:
    store = Store("sqlite://")
    store.migrate()

    def append(n: int) -> None:
        for i in range(20):
            with store.tx() as tx:
                tx.append_events([NewEvent(float(i), "tick", f"{n}-{i}")])

    threads = [threading.Thread(target=append, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with store.tx() as tx:
        assert len(tx.list_events()) == 60
    store.close()


@pytest.mark.parametrize(
    "url",
    ["not a url", "mysql://root@127.0.0.1/headway"],
)
def test_unusable_urls_are_refused_with_a_hint(url: str) -> None:
    with pytest.raises(SpecError) as caught:
        Store(url)
    assert "sqlite:///" in caught.value.hint


def test_an_unreachable_postgresql_is_store_unavailable() -> None:
    store = Store("postgresql+psycopg://postgres:secret@127.0.0.1:1/test")
    with pytest.raises(StoreUnavailable) as caught, store.tx():
        pass
    assert "127.0.0.1:1" in caught.value.message
    assert "secret" not in caught.value.message
    assert "reachable" in caught.value.hint
    with pytest.raises(StoreUnavailable):
        store.migrate()
    store.close()


def test_a_sqlite_path_that_cannot_be_created_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable) as caught:
        Store(f"sqlite:///{blocker / 'state.db'}")
    assert caught.value.hint
