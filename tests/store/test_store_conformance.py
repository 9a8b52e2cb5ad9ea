"""The store's conformance suite: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from headway.domain.models import ArtifactRef, Health, RolloutStatus, RolloutSummary
from headway.domain.spec import ServiceSpec, parse_service_spec
from headway.errors import Conflict, NotFound
from headway.store import CorruptRecord, NewEvent, OutboxItem, Store, Tx
from headway.store._schema import metadata, rollouts, services

NOW = 1_700_000_000.0


def spec(name: str = "web", **extra: Any) -> ServiceSpec:
    return parse_service_spec(
        {"name": name, "run": {"start": ["./app"]}, "health": {"http": {}}, **extra}
    )


def artifact(n: int = 1) -> ArtifactRef:
    return ArtifactRef(digest=f"sha256:{n:064x}", size=100 + n, url=f"/artifacts/{n}")


def summary(
    rid: str,
    service: str = "web",
    status: RolloutStatus = RolloutStatus.RUNNING,
    created_at: float = NOW,
) -> RolloutSummary:
    return RolloutSummary(
        id=rid,
        service=service,
        from_release=1,
        to_release=2,
        strategy="rolling",
        status=status,
        created_at=created_at,
        updated_at=created_at,
    )


# -- schema and transactions ---------------------------------------------------------------


def test_migrate_twice_is_a_no_op_and_matches_the_metadata(store: Store) -> None:
    with store.tx() as tx:
        tx.set_meta("kept", "yes")
    store.migrate()
    second = Store(store.engine.url.render_as_string(hide_password=False))
    second.migrate()  # as a second server starting on the same database would
    second.close()
    with store.tx() as tx:
        assert tx.get_meta("kept") == "yes"
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
        assert version == ["0005"]


def test_an_exception_rolls_back_every_write_of_the_transaction(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.tx() as tx:
        tx.put_service(spec(), NOW)
        tx.create_release("web", artifact(), {}, "alice", "", NOW)
        tx.append_events([NewEvent(NOW, "service.applied", "applied web")])
        tx.add_outbox([OutboxItem("a1", "r1", {"do": "x"})])
        tx.set_meta("k", "v")
        raise RuntimeError("boom")
    with store.tx() as tx:
        assert tx.list_services() == []
        assert tx.list_events() == []
        assert tx.pending_outbox() == []
        assert tx.get_meta("k") is None
        # the rolled-back release number is free again: numbering has no holes
        tx.put_service(spec(), NOW)
        assert tx.create_release("web", artifact(), {}, "", "", NOW).number == 1


def test_meta_is_a_small_key_value_map(store: Store) -> None:
    with store.tx() as tx:
        assert tx.get_meta("leader") is None
        tx.set_meta("leader", "a")
        tx.set_meta("leader", "b")
        tx.set_meta("other", "c")
    with store.tx() as tx:
        assert (tx.get_meta("leader"), tx.get_meta("other")) == ("b", "c")


# -- services --------------------------------------------------------------------------------


def test_put_service_creates_then_updates_and_round_trips(store: Store) -> None:
    web = spec("web", port=9000, strategy={"batch_size": "10%", "min_healthy_time": "250ms"})
    with store.tx() as tx:
        assert tx.put_service(web, NOW) is True
        assert tx.put_service(spec("api"), NOW) is True
    changed = spec("web", port=9001)
    with store.tx() as tx:
        assert tx.get_service("web") == web
        assert tx.put_service(changed, NOW + 1) is False
    with store.tx() as tx:
        assert tx.get_service("web") == changed
        assert [s.name for s in tx.list_services()] == ["api", "web"]


def test_service_lookups_raise_not_found_with_a_hint(store: Store) -> None:
    with store.tx() as tx:
        with pytest.raises(NotFound) as caught:
            tx.get_service("nope")
        assert "headway apply -f service.yaml" in caught.value.hint
        with pytest.raises(NotFound):
            tx.service_current_release("nope")
        with pytest.raises(NotFound):
            tx.set_service_current_release("nope", 1)
        with pytest.raises(NotFound):
            tx.list_releases("nope")
        with pytest.raises(NotFound):
            tx.create_release("nope", artifact(), {}, "", "", NOW)


def test_current_release_is_set_and_cleared(store: Store) -> None:
    with store.tx() as tx:
        tx.put_service(spec(), NOW)
        assert tx.service_current_release("web") is None
        tx.set_service_current_release("web", 3)
    with store.tx() as tx:
        assert tx.service_current_release("web") == 3
        tx.put_service(spec(port=1234), NOW)  # an update keeps the current release
        assert tx.service_current_release("web") == 3
        tx.set_service_current_release("web", None)
        assert tx.service_current_release("web") is None


def test_a_stored_spec_that_no_longer_validates_is_skipped_not_fatal(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with store.tx() as tx:
        for name in ("alpha", "beta", "gamma"):
            tx.put_service(spec(name), NOW)
    with store.engine.begin() as conn:  # as if written by another version, or by hand
        conn.execute(
            sa.update(services)
            .where(services.c.name == "alpha")
            .values(spec='{"name": "alpha", "run": {"start": []}, "surprise": 1}')
        )
        conn.execute(sa.update(services).where(services.c.name == "gamma").values(spec="{not json"))
    with caplog.at_level(logging.WARNING, logger="headway.store"), store.tx() as tx:
        assert [s.name for s in tx.list_services()] == ["beta"]
        with pytest.raises(CorruptRecord) as caught:
            tx.get_service("alpha")
        assert "alpha" in caught.value.message and caught.value.hint
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(skipped) == 2
    assert "'alpha'" in skipped[0] and "'gamma'" in skipped[1]


# -- artifacts -------------------------------------------------------------------------------


def test_artifacts_are_idempotent_by_digest(store: Store) -> None:
    with store.tx() as tx:
        tx.put_artifact(artifact(1), "/data/a1.tar.gz", NOW)
        tx.put_artifact(artifact(1), "/elsewhere.tar.gz", NOW + 5)
        tx.put_artifact(artifact(2), "/data/a2.tar.gz", NOW)
    with store.tx() as tx:
        assert tx.get_artifact(artifact(1).digest) == (artifact(1), "/data/a1.tar.gz")
        assert tx.get_artifact(artifact(2).digest) == (artifact(2), "/data/a2.tar.gz")
        with pytest.raises(NotFound):
            tx.get_artifact(artifact(3).digest)


# -- releases --------------------------------------------------------------------------------


def test_releases_are_numbered_per_service_from_one(store: Store) -> None:
    with store.tx() as tx:
        tx.put_service(spec("web"), NOW)
        tx.put_service(spec("api"), NOW)
        params = {"color": "blue"}
        first = tx.create_release("web", artifact(1), params, "alice", "first", NOW)
        params["color"] = "mutated after the call"
        assert tx.create_release("api", artifact(9), {}, "bob", "", NOW).number == 1
        second = tx.create_release("web", artifact(2), {}, "alice", "", NOW + 1)
    with store.tx() as tx:
        third = tx.create_release("web", artifact(3), {"x": "1"}, "carol", "", NOW + 2)
        assert (first.number, second.number, third.number) == (1, 2, 3)
        assert first.version == "v1"
        assert tx.list_releases("web") == [first, second, third]
        stored = tx.get_release("web", 1)
        assert stored == first
        assert stored.params == {"color": "blue"}
        assert stored.artifact == artifact(1) and stored.created_by == "alice"
        assert [r.number for r in tx.list_releases("api")] == [1]


def test_a_missing_release_lists_the_existing_versions(store: Store) -> None:
    with store.tx() as tx:
        tx.put_service(spec("web"), NOW)
        tx.put_service(spec("api"), NOW)
        with pytest.raises(NotFound) as none_yet:
            tx.get_release("web", 1)
        assert "no releases" in none_yet.value.hint
        tx.create_release("web", artifact(1), {}, "", "", NOW)
        tx.create_release("web", artifact(2), {}, "", "", NOW)
        with pytest.raises(NotFound) as caught:
            tx.get_release("web", 7)
        assert "v7" in caught.value.message
        assert caught.value.hint == "existing versions of web: v1, v2"
        with pytest.raises(NotFound) as unknown:
            tx.get_release("nope", 1)
        assert "headway apply" in unknown.value.hint


def test_releases_are_immutable_there_is_no_way_to_change_one() -> None:
    release_methods = {m for m in dir(Tx) if "release" in m and not m.startswith("_")}
    assert release_methods == {
        "create_release",
        "get_release",
        "list_releases",
        "service_current_release",
        "set_service_current_release",
    }


def test_concurrent_release_creation_never_hands_out_a_number_twice(store: Store) -> None:
    with store.tx() as tx:
        tx.put_service(spec(), NOW)
    numbers: list[int] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def create(worker: int) -> None:
        try:
            for i in range(5):
                with store.tx() as tx:
                    n = tx.create_release("web", artifact(worker * 10 + i), {}, "", "", NOW)
                with guard:
                    numbers.append(n.number)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=create, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(numbers) == list(range(1, 21))
    with store.tx() as tx:
        assert [r.number for r in tx.list_releases("web")] == list(range(1, 21))


# -- hosts -----------------------------------------------------------------------------------


def test_upsert_host_registers_then_refreshes_keeping_the_desired_state(store: Store) -> None:
    with store.tx() as tx:
        fresh = tx.upsert_host("h1", "web", "127.0.10.1", {"zone": "a"}, NOW)
        assert fresh.model_dump() == {
            "name": "h1",
            "service": "web",
            "address": "127.0.10.1",
            "labels": {"zone": "a"},
            "desired_release": None,
            "generation": 0,
            "observed_release": None,
            "observed_generation": 0,
            "health": Health.UNKNOWN,
            "connected": True,
            "detail": "",
            "last_seen": NOW,
            "serve": True,
            "config_applied": "",
            "config_on_disk": "",
            "config_drift": False,
        }
        assert tx.set_host_desired("h1", 2, 1) is True
        tx.record_observation("h1", 2, 1, Health.HEALTHY, "up", NOW + 1)
        tx.set_disconnected("h1", NOW + 2)
        assert tx.get_host("h1").connected is False
    with store.tx() as tx:
        again = tx.upsert_host("h1", "web", "127.0.10.9", {"zone": "b"}, NOW + 3)
    assert again.connected is True and again.last_seen == NOW + 3
    assert (again.address, again.labels) == ("127.0.10.9", {"zone": "b"})
    assert (again.desired_release, again.generation) == (2, 1)
    assert (again.observed_release, again.observed_generation, again.health) == (
        2,
        1,
        Health.HEALTHY,
    )


def test_set_host_desired_applies_only_newer_generations(store: Store) -> None:
    with store.tx() as tx:
        tx.upsert_host("h1", "web", "127.0.10.1", {}, NOW)
        assert tx.set_host_desired("h1", 2, 5) is True
        assert tx.set_host_desired("h1", 2, 5) is False  # the same command again: no-op
        assert tx.set_host_desired("h1", 1, 4) is False  # a stale command: refused
        assert tx.set_host_desired("h1", 3, 5) is False  # same generation, other release
    with store.tx() as tx:
        host = tx.get_host("h1")
        assert (host.desired_release, host.generation) == (2, 5)
        assert tx.set_host_desired("h1", None, 6) is True
        host = tx.get_host("h1")
        assert (host.desired_release, host.generation) == (None, 6)
        with pytest.raises(NotFound):
            tx.set_host_desired("ghost", 1, 1)


def test_the_serve_flag_changes_alone_and_survives_reconnects(store: Store) -> None:
    with store.tx() as tx:
        tx.upsert_host("h1", "web", "127.0.10.1", {}, NOW)
        tx.upsert_host("h2", "web", "127.0.10.2", {}, NOW)
        assert tx.set_host_desired("h1", 2, 3) is True
        assert tx.set_host_serve("h1", True) is False  # hosts serve from the start
        assert tx.set_host_serve("h1", False) is True
        assert tx.set_host_serve("h1", False) is False  # the same again: no change
        with pytest.raises(NotFound) as caught:
            tx.set_host_serve("ghost", False)
        assert "agent" in caught.value.hint
    with store.tx() as tx:
        h1 = tx.get_host("h1")
        assert (h1.serve, h1.desired_release, h1.generation) == (False, 2, 3)  # generation kept
        assert {h.name: h.serve for h in tx.list_hosts("web")} == {"h1": False, "h2": True}
        tx.record_observation("h1", 2, 3, Health.HEALTHY, "", NOW + 1)
        tx.set_disconnected("h1", NOW + 2)
        again = tx.upsert_host("h1", "web", "127.0.10.1", {}, NOW + 3)  # the agent is back
        assert again.serve is False
        assert tx.set_host_serve("h1", True) is True
    with store.tx() as tx:
        assert tx.get_host("h1").serve is True


def test_migrating_a_0001_database_keeps_its_hosts_serving(store_url: str) -> None:
    old = Store(store_url)
    config = Config()
    config.set_main_option("script_location", "headway.store:migrations")
    config.set_main_option("path_separator", "os")
    with old.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    with old.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO hosts (name, service, address, labels, desired_release, generation, "
            "observed_release, observed_generation, health, connected, detail, last_seen) "
            "VALUES ('old', 'web', '127.0.10.1', '{}', 1, 4, 1, 4, 'healthy', false, '', 0)"
        )
    old.close()
    store = Store(store_url)
    store.migrate()
    try:
        with store.tx() as tx:
            host = tx.get_host("old")
            assert (host.serve, host.generation, host.health) == (True, 4, Health.HEALTHY)
            assert tx.set_host_serve("old", False) is True
    finally:
        store.close()


def test_observations_disconnects_and_listing(store: Store) -> None:
    with store.tx() as tx:
        for name, service in [("h3", "web"), ("h1", "web"), ("h2", "api")]:
            tx.upsert_host(name, service, "127.0.10.1", {}, NOW)
        seen = tx.record_observation("h1", 4, 2, Health.FAILED, "bad artifact", NOW + 7)
        assert (seen.observed_release, seen.observed_generation) == (4, 2)
        assert (seen.health, seen.detail, seen.last_seen) == (
            Health.FAILED,
            "bad artifact",
            NOW + 7,
        )
        tx.set_disconnected("h3", NOW + 8)
        tx.set_disconnected("never-registered", NOW + 8)  # ignored
    with store.tx() as tx:
        assert [h.name for h in tx.list_hosts()] == ["h1", "h2", "h3"]
        assert [h.name for h in tx.list_hosts("web")] == ["h1", "h3"]
        assert tx.list_hosts("nope") == []
        h3 = tx.get_host("h3")
        assert (h3.connected, h3.last_seen) == (False, NOW + 8)
        assert tx.record_observation("h3", None, 0, Health.STARTING, "", NOW + 9).connected
        with pytest.raises(NotFound) as caught:
            tx.get_host("ghost")
        assert "agent" in caught.value.hint
        with pytest.raises(NotFound):
            tx.record_observation("ghost", 1, 1, Health.HEALTHY, "", NOW)


# -- rollouts --------------------------------------------------------------------------------


def test_rollouts_are_stored_with_their_opaque_state(store: Store) -> None:
    state = {"phase": "batch", "hosts": ["h1", "h2"], "deadline": NOW + 30.5, "n": None}
    with store.tx() as tx:
        tx.create_rollout(summary("r1"), state)
    with store.tx() as tx:
        assert tx.get_rollout("r1") == (summary("r1"), state)
        assert tx.active_rollout("web") == (summary("r1"), state)
        assert tx.active_rollout("api") is None
        moved = summary("r1").model_copy(update={"step": 2, "hosts_done": 3, "updated_at": NOW + 9})
        tx.save_rollout(moved, {"phase": "bake"})
    with store.tx() as tx:
        assert tx.get_rollout("r1") == (moved, {"phase": "bake"})
        with pytest.raises(NotFound):
            tx.get_rollout("r404")
        with pytest.raises(NotFound):
            tx.save_rollout(summary("r404"), {})


def test_a_second_active_rollout_of_a_service_is_a_conflict(store: Store) -> None:
    with store.tx() as tx:
        tx.create_rollout(summary("r1"), {})
        tx.create_rollout(summary("a1", service="api"), {})  # other services are independent
        with pytest.raises(Conflict) as caught:
            tx.create_rollout(summary("r2"), {})
        assert "r1" in caught.value.message and caught.value.hint
        with pytest.raises(Conflict):
            tx.create_rollout(summary("r1", status=RolloutStatus.SUCCEEDED), {})  # id reused
        # the transaction is still usable after a refused create
        tx.save_rollout(summary("r1", status=RolloutStatus.ROLLED_BACK), {})
        tx.create_rollout(summary("r2", created_at=NOW + 1), {})
    with store.tx() as tx:
        assert [s.id for s, _ in tx.active_rollouts()] == ["a1", "r2"]
        assert tx.get_rollout("r2")[0].status is RolloutStatus.RUNNING


def test_the_database_itself_allows_one_active_rollout_per_service(store: Store) -> None:
    def row(rid: str, status: str) -> dict[str, Any]:
        return {
            "id": rid,
            "service": "web",
            "status": status,
            "summary": "{}",
            "state": "{}",
            "created_at": NOW,
            "updated_at": NOW,
        }

    with store.engine.begin() as conn:  # bypass Tx and its check
        conn.execute(sa.insert(rollouts), [row("t1", "succeeded"), row("t2", "aborted")])
        conn.execute(sa.insert(rollouts).values(row("r1", "paused")))
    for status in ("running", "rolling_back", "some-future-status"):
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
            conn.execute(sa.insert(rollouts).values(row("r2", status)))
    with store.engine.begin() as conn:
        conn.execute(sa.insert(rollouts).values(row("t3", "failed")))
        conn.execute(sa.insert(rollouts).values(row("t4", "rolled_back")))


def test_saving_a_finished_rollout_as_active_again_hits_the_constraint(store: Store) -> None:
    with store.tx() as tx:
        tx.create_rollout(summary("old", status=RolloutStatus.FAILED), {})
        tx.create_rollout(summary("new"), {})
        with pytest.raises(Conflict):
            tx.save_rollout(summary("old", status=RolloutStatus.RUNNING), {})
        assert tx.get_rollout("old")[0].status is RolloutStatus.FAILED


def test_two_rollouts_started_at_once_exactly_one_wins(store: Store) -> None:
    first_inside = threading.Event()
    outcome: dict[str, BaseException | None] = {}

    def second() -> None:
        first_inside.wait()
        try:
            with store.tx() as tx:
                tx.create_rollout(summary("r2"), {})
            outcome["r2"] = None
        except BaseException as error:
            outcome["r2"] = error

    racer = threading.Thread(target=second)
    racer.start()
    with store.tx() as tx:
        tx.create_rollout(summary("r1"), {})
        first_inside.set()
        racer.join(timeout=0.3)  # the second waits on the lock or on the index
        assert racer.is_alive()
    racer.join()
    assert isinstance(outcome["r2"], Conflict)
    with store.tx() as tx:
        assert [s.id for s, _ in tx.active_rollouts()] == ["r1"]


def test_list_rollouts_is_newest_first_with_filter_and_limit(store: Store) -> None:
    with store.tx() as tx:
        for i in range(5):
            service = "web" if i % 2 == 0 else "api"
            tx.create_rollout(
                summary(f"r{i}", service, RolloutStatus.SUCCEEDED, created_at=NOW + i), {}
            )
        tx.create_rollout(summary("same-time", "web", RolloutStatus.ABORTED, NOW + 4), {})
    with store.tx() as tx:
        assert [s.id for s in tx.list_rollouts()] == ["same-time", "r4", "r3", "r2", "r1", "r0"]
        assert [s.id for s in tx.list_rollouts("web", limit=3)] == ["same-time", "r4", "r2"]
        assert [s.id for s in tx.list_rollouts("api")] == ["r3", "r1"]
        assert tx.active_rollouts() == []


def test_an_unreadable_rollout_is_skipped_by_lists(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with store.tx() as tx:
        tx.create_rollout(summary("r1"), {})
        tx.create_rollout(summary("a1", "api"), {})
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(rollouts).where(rollouts.c.id == "r1").values(summary='{"id": "r1"}')
        )
    with caplog.at_level(logging.WARNING, logger="headway.store"), store.tx() as tx:
        assert [s.id for s, _ in tx.active_rollouts()] == ["a1"]
        assert [s.id for s in tx.list_rollouts()] == ["a1"]
        with pytest.raises(CorruptRecord):
            tx.get_rollout("r1")
        with pytest.raises(Conflict):  # still active as far as the database is concerned
            tx.create_rollout(summary("r2"), {})
    assert any("'r1'" in r.getMessage() for r in caplog.records)


# -- events ----------------------------------------------------------------------------------


def test_events_are_appended_in_order_and_filtered(store: Store) -> None:
    batch = [
        NewEvent(NOW, "rollout.started", "start", service="web", rollout_id="r1", actor="alice"),
        NewEvent(NOW + 1, "host.changed", "h1 -> v2", service="web", rollout_id="r1", host="h1"),
        NewEvent(NOW + 1, "service.applied", "api applied", service="api"),
        NewEvent(NOW + 2, "host.changed", "h2 -> v2", service="web", rollout_id="r1", host="h2"),
    ]
    with store.tx() as tx:
        tx.append_events(batch[:2])
        tx.append_events([])
    with store.tx() as tx:
        tx.append_events(batch[2:])
    with store.tx() as tx:
        everything = tx.list_events()
        assert [e.message for e in everything] == [e.message for e in batch]
        ids = [e.id for e in everything]
        assert ids == sorted(ids) and len(set(ids)) == 4
        first = everything[0]
        assert (first.ts, first.kind, first.service, first.rollout_id, first.host, first.actor) == (
            NOW,
            "rollout.started",
            "web",
            "r1",
            "",
            "alice",
        )
        assert [e.message for e in tx.list_events(service="api")] == ["api applied"]
        assert [e.host for e in tx.list_events(rollout_id="r1", after=ids[0])] == ["h1", "h2"]
        assert [e.id for e in tx.list_events(after=ids[1], limit=1)] == [ids[2]]
        assert tx.list_events(service="web", rollout_id="r2") == []
        assert tx.list_events(after=ids[-1]) == []


# -- outbox ----------------------------------------------------------------------------------


def test_outbox_dedupes_by_action_id_and_keeps_insertion_order(store: Store) -> None:
    with store.tx() as tx:
        tx.add_outbox(
            [
                OutboxItem("b", "r1", {"set": "h2", "release": 2}),
                OutboxItem("a", "r1", {"set": "h1", "release": 2}),
                OutboxItem("b", "r1", {"set": "ignored"}),  # repeated within one batch
            ]
        )
    with store.tx() as tx:
        tx.add_outbox([OutboxItem("a", "r9", {"x": 1}), OutboxItem("c", "r2", {"drain": "h3"})])
        pending = tx.pending_outbox()
        assert pending == [
            OutboxItem("b", "r1", {"set": "h2", "release": 2}),
            OutboxItem("a", "r1", {"set": "h1", "release": 2}),
            OutboxItem("c", "r2", {"drain": "h3"}),
        ]
        assert [i.action_id for i in tx.pending_outbox(limit=2)] == ["b", "a"]
        tx.mark_done(["b", "c", "unknown", "c"])
        tx.mark_done([])
    with store.tx() as tx:
        assert [i.action_id for i in tx.pending_outbox()] == ["a"]
        tx.add_outbox([OutboxItem("b", "r1", {"again": True})])  # done stays done
        assert [i.action_id for i in tx.pending_outbox()] == ["a"]
