"""The inbox and host reads that servers sharing a database do in bulk, on both backends.

The leader reads the ids of pending requests and then only the payloads it has not
taken yet; replies are answered, taken and deleted by sets of ids (runs of ids on
SQLite, one array on PostgreSQL); a follower reads the desired state of many hosts in
one statement and finds the hosts whose agents have not caught up.
"""

from __future__ import annotations

from headway.domain.models import Health
from headway.store import HostObservation, Store

N = 1200  # over the 500 ids per statement used on SQLite


def test_ids_first_then_only_the_payloads_not_taken(store: Store) -> None:
    items = [("HostReport" if i % 3 else "StartRollout", f'{{"i":{i}}}', i % 3 == 0) for i in range(N)]
    with store.tx() as tx:
        wanting = tx.add_inbox("f1", items, 5.0)
        ids = tx.pending_inbox_ids(limit=10 * N)
    assert len(ids) == N and ids == sorted(ids)
    assert wanting == [i for i, item in zip(ids, items, strict=True) if item[2]]
    assert tx_payloads(store, ids) == [payload for _, payload, _ in items]
    taken = ids[: N // 2]
    with store.tx() as tx:
        new = [i for i in tx.pending_inbox_ids(limit=10 * N) if i not in set(taken)]
        read = tx.inbox_items(list(reversed(new)))  # any order in, id order out
    assert [item.id for item in read] == ids[N // 2 :]
    assert [(item.sender, item.payload) for item in read[:2]] == [
        ("f1", items[N // 2][1]),
        ("f1", items[N // 2 + 1][1]),
    ]
    with store.tx() as tx:
        assert tx.pending_inbox_ids(limit=7) == ids[:7]


def test_answers_and_replies_by_sets_of_ids(store: Store) -> None:
    items = [("StartRollout", "{}", i % 2 == 0) for i in range(N)]
    with store.tx() as tx:
        tx.add_inbox("f1", items, 5.0)
        ids = tx.pending_inbox_ids(limit=10 * N)
        tx.answer_inbox([(i, f'{{"n":{i}}}' if w else None) for i, (_, _, w) in zip(ids, items, strict=True)])
        assert tx.pending_inbox_ids(limit=10 * N) == []
    wanted = ids[::2]
    with store.tx() as tx:
        assert tx.take_replies(ids[1::2]) == {}  # no reply wanted: those rows are gone
        replies = tx.take_replies(wanted)
        assert replies == {i: f'{{"n":{i}}}' for i in wanted}
        assert tx.take_replies(wanted) == {}  # taken once
        assert tx.purge_inbox(older_than=10.0) == 0


def test_host_targets_and_hosts_behind(store: Store) -> None:
    with store.tx() as tx:
        for name in ("h1", "h2", "h3"):
            tx.upsert_host(name, "web", "127.0.0.1", {"service": "web"}, 1.0)
        tx.set_host_desired("h1", 1, 1)
        tx.set_host_desired("h2", 2, 3)
        tx.set_host_serve("h2", False)
        tx.record_observations([HostObservation("h1", 1, 1, Health.HEALTHY.value, "", "", "")], 2.0)
    with store.tx() as tx:
        targets = tx.host_targets(["h1", "h2", "h3", "nobody"])
        behind = tx.hosts_behind()
        assert tx.host_targets([]) == {}
    assert set(targets) == {"h1", "h2", "h3"}
    h1, h2, h3 = targets["h1"], targets["h2"], targets["h3"]
    assert (h1.service, h1.desired_release, h1.generation, h1.serve) == ("web", 1, 1, True)
    assert (h2.desired_release, h2.generation, h2.serve) == (2, 3, False)
    assert (h3.desired_release, h3.generation) == (None, 0)
    assert behind == [("h2", 3)]  # h1 reported its generation; h3 has none to apply


def tx_payloads(store: Store, ids: list[int]) -> list[str]:
    with store.tx() as tx:
        return [item.payload for item in tx.inbox_items(ids)]
