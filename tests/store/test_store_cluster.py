"""The lease, its fencing token and the inbox, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from headway.errors import Fenced
from headway.store import NewEvent, Store
from headway.testing.pg import fresh_schema


def test_a_new_database_has_an_unheld_runner_lease(store: Store) -> None:
    with store.tx() as tx:
        lease = tx.lease()
    assert (lease.holder, lease.token) == ("", 0)
    assert lease.expired
    assert abs(lease.now - time.time()) < 5  # the database's clock, in epoch seconds


def test_taking_the_lease_raises_the_token_and_renewal_needs_the_current_token(store: Store) -> None:
    with store.tx() as tx:
        first = tx.take_lease("server-a", "a:7400", ttl=10)
    with store.tx() as tx:
        second = tx.take_lease("server-b", "b:7400", ttl=10)
    assert second == first + 1
    with store.tx() as tx:
        assert not tx.renew_lease(first, ttl=10)  # a's term is over
        assert tx.renew_lease(second, ttl=10)
        lease = tx.lease()
    assert (lease.holder, lease.about, lease.token) == ("server-b", "b:7400", second)
    assert 9 < lease.expires_at - lease.now <= 10
    with store.tx() as tx:
        tx.end_lease(first)  # not the holder: nothing happens
        assert not tx.lease().expired
        tx.end_lease(second)
        assert tx.lease().expired


def test_a_deposed_token_writes_nothing(store: Store) -> None:
    with store.tx() as tx:
        old = tx.take_lease("server-a", "a:7400", ttl=10)
    with store.tx(fence=old) as tx:
        tx.append_events([NewEvent(ts=1.0, kind="k", message="written by the leader")])
    with store.tx() as tx:
        tx.take_lease("server-b", "b:7400", ttl=10)
    with pytest.raises(Fenced) as refused, store.tx(fence=old) as tx:
        tx.append_events([NewEvent(ts=2.0, kind="k", message="written by a deposed leader")])
    assert "b:7400 leads with token" in refused.value.message
    with store.tx() as tx:
        assert [e.message for e in tx.list_events()] == ["written by the leader"]


@pytest.mark.postgres
def test_a_takeover_waits_for_the_leaders_open_transaction() -> None:
    """PostgreSQL: the fence check share-locks the lease row until the commit, so a
    takeover cannot slip in between the check and the leader's writes."""
    with fresh_schema() as url:
        store = Store(url)
        store.migrate()
        try:
            _takeover_waits(store)
        finally:
            store.close()


def _takeover_waits(store: Store) -> None:
    with store.tx() as tx:
        old = tx.take_lease("server-a", "a:7400", ttl=10)
    took: list[float] = []

    def take_over() -> None:
        with store.tx() as tx:
            tx.take_lease("server-b", "b:7400", ttl=10)
        took.append(time.monotonic())

    with store.tx(fence=old) as tx:
        thread = threading.Thread(target=take_over)
        thread.start()
        time.sleep(0.5)
        assert not took, "the takeover did not wait for the leader's transaction"
        tx.append_events([NewEvent(ts=1.0, kind="k", message="last write of the old term")])
        committed = time.monotonic()
    thread.join(10)
    assert took and took[0] >= committed
    with pytest.raises(Fenced), store.tx(fence=old):
        pass


def test_the_inbox_keeps_order_replies_once_and_can_be_withdrawn(store: Store) -> None:
    with store.tx() as tx:
        ids = tx.add_inbox("f1", [("HostReport", "{}", False), ("StartRollout", '{"a":1}', True)], 5.0)
        tx.add_inbox("f2", [("HostGone", "{}", False)], 6.0)
        tx.notify("inbox")  # a no-op on SQLite; delivered at commit on PostgreSQL
    with store.tx() as tx:
        pending = tx.pending_inbox()
    assert [(i.sender, i.kind, i.wants_reply) for i in pending] == [
        ("f1", "HostReport", False),
        ("f1", "StartRollout", True),
        ("f2", "HostGone", False),
    ]
    assert [i.id for i in pending[1:2]] == ids  # the ids of those that want a reply
    assert pending[0].id < pending[1].id < pending[2].id
    with store.tx() as tx:
        report = pending[0].id
        tx.answer_inbox([(report, None), (ids[0], '{"none":null}')])
        assert tx.take_replies([report]) == {}  # no reply wanted: the row is gone
    with store.tx() as tx:
        assert [i.kind for i in tx.pending_inbox()] == ["HostGone"]
        assert tx.take_replies(ids) == {ids[0]: '{"none":null}'}
        assert tx.take_replies(ids) == {}  # taken once
        gone = tx.pending_inbox()[0].id
        assert tx.withdraw_inbox(gone)
        assert tx.pending_inbox() == []
        late = tx.add_inbox("f1", [("StartRollout", "{}", True)], 7.0)[0]
        tx.answer_inbox([(late, '{"none":null}')])
        assert not tx.withdraw_inbox(late)  # handled already: its reply must be taken instead
        assert tx.purge_inbox(older_than=8.0) == 1
