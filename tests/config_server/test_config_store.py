"""Conformance of the store's config methods: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from headway.domain.models import ArtifactRef, ConfigRevision, ConfigSourceKind, Health
from headway.domain.spec import parse_service_spec
from headway.errors import NotFound, SpecError
from headway.store import Store
from headway.store._schema import config_revisions, metadata

NOW = 1_700_000_000.0
ARTIFACT = ArtifactRef(digest="sha256:" + "a" * 64, size=10, url="/a")


def revision(n: int, service: str = "web", **extra: object) -> ConfigRevision:
    digest = f"sha256:{n:02x}" + "c" * 62
    return ConfigRevision.model_validate(
        {
            "id": digest[7:19],
            "service": service,
            "digest": digest,
            "size": 100 + n,
            "files": ["b.conf", "a.conf"],
            "created_at": NOW + n,
            "created_by": "alice",
            **extra,
        }
    )


def setup(store: Store, *services: str) -> None:
    with store.tx() as tx:
        for name in services or ("web",):
            tx.put_service(
                parse_service_spec({"name": name, "run": {"start": ["./a"]}, "health": {"tcp": {}}}), NOW
            )


def test_schema_head_is_0005_and_matches_the_metadata(store: Store) -> None:
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == ["0005"]


def test_revisions_are_content_addressed_per_service(store: Store) -> None:
    setup(store, "web", "api")
    first = revision(
        1, source=ConfigSourceKind.GIT, git_commit="f" * 40, committed_at=NOW, origin="/srv/c.git"
    )
    with store.tx() as tx:
        stored, created = tx.put_config_revision(first, "/state/configs/1.tar.gz")
        assert created and stored == first
        again, created = tx.put_config_revision(revision(1, created_by="bob"), "/elsewhere")
        assert not created and again == first  # the first record stands
        _, created = tx.put_config_revision(revision(1, service="api"), "/state/configs/1.tar.gz")
        assert created  # the same bytes are a revision of another service too
        tx.put_config_revision(revision(2), "/state/configs/2.tar.gz")
    with store.tx() as tx:
        assert [r.id for r in tx.list_config_revisions("web")] == [revision(2).id, first.id]  # newest first
        assert len(tx.list_config_revisions("web", limit=1)) == 1
        assert tx.list_config_revisions("api")[0].service == "api"
        assert tx.config_revision_path(first.digest) == "/state/configs/1.tar.gz"
        got = tx.get_config_revision("web", first.digest)
        assert got.git_commit == "f" * 40 and got.committed_at == NOW and got.source is ConfigSourceKind.GIT
        assert got.files == ["b.conf", "a.conf"] and got.origin == "/srv/c.git"
        assert tx.get_config_revision("web", first.id) == got
        assert tx.get_config_revision("web", first.id.upper()) == got
        assert tx.get_config_revision("web", "fffffff") == got  # a git commit prefix
    with store.tx() as tx, pytest.raises(NotFound, match="no config revision"):
        tx.get_config_revision("web", "deadbeef")
    for bad in ("", "zz", "sha256:xyz", "../../etc", "a%"):
        with store.tx() as tx, pytest.raises(SpecError, match="not a config revision"):
            tx.get_config_revision("web", bad)
    with store.tx() as tx, pytest.raises(NotFound, match="does not exist"):
        tx.put_config_revision(revision(3, service="nope"), "/x")
    with store.tx() as tx, pytest.raises(NotFound):
        tx.config_revision_path("sha256:" + "0" * 64)
    with store.tx() as tx, pytest.raises(NotFound, match="does not exist"):
        tx.list_config_revisions("nope")


def test_a_prefix_matching_two_revisions_is_ambiguous(store: Store) -> None:
    setup(store)
    with store.tx() as tx:
        for n, head in ((1, "abcd1"), (2, "abcd2")):
            digest = "sha256:" + head + "0" * 59
            tx.put_config_revision(
                revision(n).model_copy(update={"digest": digest, "id": digest[7:19]}), "/p"
            )
    with store.tx() as tx:
        with pytest.raises(SpecError, match="more than one"):
            tx.get_config_revision("web", "abcd")
        assert tx.get_config_revision("web", "abcd2").digest.startswith("sha256:abcd2")


def test_a_bad_stored_revision_is_skipped_by_list_and_named_by_get(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    setup(store)
    with store.tx() as tx:
        tx.put_config_revision(revision(1), "/p1")
        tx.put_config_revision(revision(2), "/p2")
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(config_revisions)
            .where(config_revisions.c.digest == revision(2).digest)
            .values(files="{")
        )
    with caplog.at_level(logging.WARNING), store.tx() as tx:
        assert [r.id for r in tx.list_config_revisions("web")] == [revision(1).id]
    assert "no longer decodes" in caplog.text
    with store.tx() as tx, pytest.raises(SpecError, match="no longer decodes"):
        tx.get_config_revision("web", revision(2).id)


def test_releases_carry_their_config(store: Store) -> None:
    setup(store)
    ref = revision(1).ref()
    with store.tx() as tx:
        plain = tx.create_release("web", ARTIFACT, {}, "alice", "", NOW)
        with_config = tx.create_release("web", ARTIFACT, {"A": "1"}, "alice", "", NOW, config=ref)
    assert plain.config is None and with_config.config == ref
    with store.tx() as tx:
        assert tx.get_release("web", 1).config is None
        assert tx.get_release("web", 2).config == ref
        assert [r.config for r in tx.list_releases("web")] == [None, ref]


def test_hosts_record_config_hashes_and_drift(store: Store) -> None:
    setup(store)
    with store.tx() as tx:
        fresh = tx.upsert_host("h1", "web", "127.0.0.1", {}, NOW)
        assert (fresh.config_applied, fresh.config_on_disk, fresh.config_drift) == ("", "", False)
        same = tx.record_observation(
            "h1", 1, 1, Health.HEALTHY, "", NOW, config_applied="x", config_on_disk="x"
        )
        assert same.config_applied == "x" and not same.config_drift
        edited = tx.record_observation(
            "h1", 1, 1, Health.HEALTHY, "", NOW, config_applied="x", config_on_disk="y"
        )
        assert edited.config_drift
        kept = tx.record_observation("h1", 1, 1, Health.HEALTHY, "", NOW + 1)  # no hashes: kept as they are
        assert (kept.config_applied, kept.config_on_disk, kept.config_drift) == ("x", "y", True)
        removed = tx.record_observation(
            "h1", 1, 1, Health.HEALTHY, "", NOW, config_applied="x", config_on_disk=""
        )
        assert removed.config_drift  # the files were deleted
    with store.tx() as tx:
        assert tx.get_host("h1").config_drift and tx.list_hosts("web")[0].config_on_disk == ""
        tx.upsert_host("h1", "web", "127.0.0.1", {}, NOW + 2)  # a reconnect keeps the hashes
        assert tx.get_host("h1").config_applied == "x"


def test_swap_meta_lets_exactly_one_writer_win(store: Store) -> None:
    with store.tx() as tx:
        assert tx.swap_meta("k", None, "c1")
        assert not tx.swap_meta("k", None, "c1b")  # present already
        assert not tx.swap_meta("k", "c0", "c2")  # not what is there
        assert tx.swap_meta("k", "c1", "c2")
        assert tx.get_meta("k") == "c2"
        tx.delete_meta("k")
        assert tx.get_meta("k") is None
        tx.delete_meta("k")  # absent: nothing to do
    wins: list[bool] = []
    barrier = threading.Barrier(4)

    def contend() -> None:
        barrier.wait()
        with store.tx() as tx:
            wins.append(tx.swap_meta("commit", None, threading.current_thread().name))

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]
