"""The store's conformance suite, bulk writes: every test runs on SQLite and on PostgreSQL.

The runner writes all the reports of a batch with `Tx.record_observations` and
all the desired states of a step with `Tx.set_hosts_desired`; they must leave
the store as the single-row methods would (scale targets T3/T4).
"""

from __future__ import annotations

import json

from headway.domain.models import Health, RolloutStatus, RolloutSummary
from headway.store import HostObservation, Store

NOW = 1_700_000_000.0


def register(store: Store, *names: str) -> None:
    with store.tx() as tx:
        for name in names:
            tx.upsert_host(name, "web", "127.0.10.1", {}, NOW)


def test_bulk_observations_store_each_host_like_single_ones(store: Store) -> None:
    register(store, "h1", "h2", "h3")
    with store.tx() as tx:
        tx.record_observation("h3", 1, 1, Health.HEALTHY, "single", NOW + 1)
        tx.record_observations(
            [
                HostObservation("h1", 2, 3, Health.STARTING.value, "restarting"),
                HostObservation("h2", None, 0, Health.UNKNOWN.value, ""),
                HostObservation("h1", 2, 3, Health.HEALTHY.value, "up", "sha256:aa", "sha256:bb"),
                HostObservation("ghost", 1, 1, Health.HEALTHY.value),  # not registered: ignored
            ],
            NOW + 5,
        )
    with store.tx() as tx:
        h1, h2, h3 = (tx.get_host(n) for n in ("h1", "h2", "h3"))
        # rows apply in order: the later report of h1 wins
        assert (h1.observed_release, h1.observed_generation, h1.health, h1.detail) == (
            2,
            3,
            Health.HEALTHY,
            "up",
        )
        assert (h1.config_applied, h1.config_on_disk) == ("sha256:aa", "sha256:bb")
        assert (h1.connected, h1.last_seen) == (True, NOW + 5)
        assert (h2.observed_release, h2.health) == (None, Health.UNKNOWN)
        assert (h3.detail, h3.last_seen) == ("single", NOW + 1)  # untouched
        assert [h.name for h in tx.list_hosts()] == ["h1", "h2", "h3"]


def test_an_identical_report_writes_nothing_but_a_reconnect_is_stored(store: Store) -> None:
    register(store, "h1")
    same = HostObservation("h1", 4, 2, Health.HEALTHY.value, "ok")
    with store.tx() as tx:
        tx.record_observations([same], NOW + 1)
    with store.tx() as tx:
        tx.record_observations([same], NOW + 2)  # a heartbeat: no write
        assert tx.get_host("h1").last_seen == NOW + 1
        tx.record_observations([HostObservation("h1", 4, 2, Health.HEALTHY.value, "ok", "x")], NOW + 3)
        assert (tx.get_host("h1").config_applied, tx.get_host("h1").last_seen) == ("x", NOW + 3)
        tx.set_disconnected("h1", NOW + 4)
        tx.record_observations([HostObservation("h1", 4, 2, Health.HEALTHY.value, "ok", "x")], NOW + 5)
        back = tx.get_host("h1")
        assert (back.connected, back.last_seen) == (True, NOW + 5)
        # a change in any one field is written
        for changed in (
            HostObservation("h1", None, 2, Health.HEALTHY.value, "ok", "x"),
            HostObservation("h1", None, 3, Health.HEALTHY.value, "ok", "x"),
            HostObservation("h1", None, 3, Health.FAILED.value, "ok", "x"),
            HostObservation("h1", None, 3, Health.FAILED.value, "crashed", "x"),
            HostObservation("h1", None, 3, Health.FAILED.value, "crashed", "x", "y"),
        ):
            tx.record_observations([changed], NOW + 6)
            got = tx.get_host("h1")
            assert (
                got.observed_release,
                got.observed_generation,
                got.health.value,
                got.detail,
                got.config_applied,
                got.config_on_disk,
            ) == (
                changed.release,
                changed.generation,
                changed.health,
                changed.detail,
                changed.config_applied,
                changed.config_on_disk,
            )


def test_bulk_desired_states_apply_only_newer_generations(store: Store) -> None:
    register(store, "h1", "h2", "h3")
    with store.tx() as tx:
        assert tx.set_host_desired("h2", 1, 5) is True
        tx.set_hosts_desired([("h1", 2, 1), ("h2", 2, 4), ("h3", 2, 1), ("ghost", 2, 9), ("h3", 3, 2)])
    with store.tx() as tx:
        got = {h.name: (h.desired_release, h.generation) for h in tx.list_hosts()}
    assert got == {"h1": (2, 1), "h2": (1, 5), "h3": (3, 2)}
    with store.tx() as tx:
        tx.set_hosts_desired([])  # nothing to do
        tx.set_hosts_desired([("h1", None, 7)])
        assert (tx.get_host("h1").desired_release, tx.get_host("h1").generation) == (None, 7)


def test_a_rollout_state_can_be_saved_as_its_encoded_text(store: Store) -> None:
    summary = RolloutSummary(
        id="r1",
        service="web",
        from_release=1,
        to_release=2,
        strategy="rolling",
        status=RolloutStatus.RUNNING,
        created_at=NOW,
        updated_at=NOW,
    )
    state = {"phase": "running", "hosts": [{"name": "h1", "deadline": NOW + 0.25}]}
    with store.tx() as tx:
        tx.create_rollout(summary, '{"phase":"new"}')
        assert tx.get_rollout("r1") == (summary, {"phase": "new"})
        tx.save_rollout(summary, json.dumps(state, separators=(",", ":")))
    with store.tx() as tx:
        assert tx.get_rollout("r1") == (summary, state)
