"""Sign-in sessions kept in the store: idle and lifetime limits, sign-out, a bound on their
number, no cookie value stored, and two servers sharing them (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from headway.clock import ManualClock
from headway.server.ui import sessions as s
from headway.store import Store
from headway.testing.pg import fresh_schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'headway.db'}")
        store.migrate()
        yield store
        store.close()
        return
    with fresh_schema() as url:
        store = Store(url)
        store.migrate()
        yield store
        store.close()


def test_a_session_lives_until_idle_or_old_and_ends_on_sign_out(store: Store) -> None:
    clock = ManualClock()
    sessions = s.Sessions(clock, lambda: store)
    cookie, session = sessions.create("ui:ada")
    found = sessions.get(cookie)
    assert found is not None and (found.actor, found.csrf) == ("ui:ada", session.csrf)
    assert sessions.get("forged") is None and sessions.get(None) is None
    clock.advance(s.IDLE - 1)
    assert sessions.get(cookie) is not None  # touched: idle time starts again
    clock.advance(s.IDLE - 1)
    assert sessions.get(cookie) is not None
    clock.advance(s.LIFETIME)
    assert sessions.get(cookie) is None  # too old, however busy

    cookie, session = sessions.create("ui:ada")
    clock.advance(s.IDLE + 1)
    assert sessions.get(cookie) is None  # idle too long

    cookie, session = sessions.create("ui:bob")
    assert sessions.alive(session)
    sessions.end(cookie)
    assert sessions.get(cookie) is None and not sessions.alive(session)


def test_another_server_and_a_restarted_one_know_the_session(store: Store) -> None:
    clock = ManualClock()
    here, there = s.Sessions(clock, lambda: store), s.Sessions(clock, lambda: store)
    cookie, session = here.create("ui:ada")
    seen = there.get(cookie)
    assert seen is not None and (seen.actor, seen.csrf) == ("ui:ada", session.csrf)
    restarted = s.Sessions(clock, lambda: store)
    assert restarted.get(cookie) is not None
    there.end(cookie)  # signed out on the other server
    assert here.alive(session)  # remembered here for a few seconds ...
    clock.advance(s.RECHECK)
    assert not here.alive(session)  # ... then gone here too
    assert here.get(cookie) is None


def test_sessions_are_bounded_and_keep_no_cookie_value(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s, "MAX_SESSIONS", 50)
    clock = ManualClock()
    sessions = s.Sessions(clock, lambda: store)
    first, _ = sessions.create("ui:a")
    cookies = []
    for _ in range(s.MAX_SESSIONS):
        clock.advance(0.001)
        cookies.append(sessions.create("ui:b")[0])
    clock.advance(s.RECHECK)
    assert sessions.get(first) is None  # the oldest went
    assert sessions.get(cookies[-1]) is not None
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM ui_sessions")).all()
    assert len(rows) == s.MAX_SESSIONS
    assert not any(first in str(tuple(r)) or cookies[-1] in str(tuple(r)) for r in rows)
