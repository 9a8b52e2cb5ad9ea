"""`Tx`: every read and write of the store, inside one database transaction.

A `Tx` wraps one connection with a transaction already open; `Store.tx`
commits it on a normal exit and rolls it back on an exception. It is not
shared between threads: each thread opens its own.

Rows that no longer decode (a spec from an older version, a value edited
by hand) are skipped with a logged warning by the ``list_*`` methods, so
one bad record never stops a server from starting; the ``get_*`` methods
raise a `HeadwayError` that names the record instead.
"""

from __future__ import annotations

import json
import logging
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.compiler import SQLCompiler

from headway.domain.models import (
    ArtifactRef,
    ConfigRevisionRef,
    ConfigSourceKind,
    Event,
    Health,
    HostView,
    Release,
    RolloutSummary,
)
from headway.domain.spec import ServiceSpec, parse_service_spec
from headway.errors import Conflict, HeadwayError, NotFound, SpecError
from headway.store._schema import (
    TERMINAL_STATUSES,
    artifacts,
    events,
    hosts,
    meta,
    outbox,
    releases,
    rollouts,
    services,
)
from headway.store._tx_cluster import ClusterTx
from headway.store._tx_config import ConfigTx, config_drift
from headway.store._tx_ui import UiSessionTx
from headway.store._types import HostObservation, NewEvent, OutboxItem

log = logging.getLogger("headway.store")

T = TypeVar("T")

# A result row. Spelled Any because Row's type parameters differ between
# SQLAlchemy 2.0 (one tuple type) and 2.1 (a TypeVarTuple).
_Row = Any

# Taken (per transaction) before events are inserted on PostgreSQL, so that
# event ids become visible in id order and a reader polling with
# ``after=<last id>`` never skips an event committed late with a lower id.
EVENTS_LOCK_KEY = 0x68_65_61_64_77_61_79  # "headway"

_APPLY_HINT = "create it with: headway apply -f service.yaml"
_HOST_HINT = "hosts appear when their agent connects; check that `headway agent` runs there"


class CorruptRecord(HeadwayError):
    """A stored row that no longer decodes; raised by ``get_*`` (``list_*`` skip it)."""

    kind = "corrupt_record"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _loads_dict(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {type(value).__name__}")
    return value


_DECODE_ERRORS = (ValueError, TypeError, KeyError, ValidationError, SpecError)


# Statements the runner executes for many hosts at once, built once: building a Core
# statement and its cache key costs more than running it (executemany runs one compiled
# statement over every row).
_OBSERVE = (
    sa.update(hosts)
    .where(
        hosts.c.name == sa.bindparam("o_name"),
        sa.or_(
            hosts.c.connected == sa.false(),
            hosts.c.observed_release.is_distinct_from(sa.bindparam("o_release", type_=sa.Integer())),
            hosts.c.observed_generation != sa.bindparam("o_generation", type_=sa.BigInteger()),
            hosts.c.health != sa.bindparam("o_health", type_=sa.Text()),
            hosts.c.detail != sa.bindparam("o_detail", type_=sa.Text()),
            hosts.c.config_applied != sa.bindparam("o_applied", type_=sa.Text()),
            hosts.c.config_on_disk != sa.bindparam("o_on_disk", type_=sa.Text()),
        ),
    )
    .values(
        observed_release=sa.bindparam("o_release"),
        observed_generation=sa.bindparam("o_generation"),
        health=sa.bindparam("o_health"),
        detail=sa.bindparam("o_detail"),
        config_applied=sa.bindparam("o_applied"),
        config_on_disk=sa.bindparam("o_on_disk"),
        connected=sa.true(),
        last_seen=sa.bindparam("o_now", type_=sa.Double()),
    )
)
_SET_DESIRED = (
    sa.update(hosts)
    .where(
        hosts.c.name == sa.bindparam("d_name"),
        hosts.c.generation < sa.bindparam("d_generation", type_=sa.BigInteger()),
    )
    .values(
        desired_release=sa.bindparam("d_release", type_=sa.Integer()),
        generation=sa.bindparam("d_generation"),
    )
)
_GET_HOST = sa.select(hosts).where(hosts.c.name == sa.bindparam("h_name"))
_APPEND_EVENT = sa.insert(events).values(
    ts=sa.bindparam("e_ts", type_=sa.Double()),
    kind=sa.bindparam("e_kind", type_=sa.Text()),
    message=sa.bindparam("e_message", type_=sa.Text()),
    service=sa.bindparam("e_service", type_=sa.Text()),
    rollout_id=sa.bindparam("e_rollout_id", type_=sa.Text()),
    host=sa.bindparam("e_host", type_=sa.Text()),
    actor=sa.bindparam("e_actor", type_=sa.Text()),
)
_OUTBOX_VALUES = {
    "action_id": sa.bindparam("x_action_id", type_=sa.Text()),
    "rollout_id": sa.bindparam("x_rollout_id", type_=sa.Text()),
    "payload": sa.bindparam("x_payload", type_=sa.Text()),
    "done": sa.false(),
}
_ADD_OUTBOX_SQLITE = (
    sqlite.insert(outbox).values(**_OUTBOX_VALUES).on_conflict_do_nothing(index_elements=["action_id"])
)
_ADD_OUTBOX_PG = (
    postgresql.insert(outbox).values(**_OUTBOX_VALUES).on_conflict_do_nothing(index_elements=["action_id"])
)
_MARK_DONE = (
    sa.update(outbox)
    .where(outbox.c.action_id == sa.bindparam("m_action_id", type_=sa.Text()))
    .values(done=sa.true())
)

# SQL text -> the named tuple type of the rows `Tx._driver_rows` reads with it
_ROW_TYPES: dict[str, Any] = {}
# (dialect, statement) -> (SQL text, bind names in order for a positional driver, else None)
_DRIVER_SQL: dict[tuple[str, int], tuple[str, tuple[str, ...] | None]] = {}


def _driver_sql(conn: Connection, stmt: sa.ClauseElement) -> tuple[str, tuple[str, ...] | None]:
    key = (conn.dialect.name, id(stmt))
    found = _DRIVER_SQL.get(key)
    if found is None:
        compiled = cast(SQLCompiler, stmt.compile(dialect=conn.dialect))
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        found = _DRIVER_SQL[key] = (compiled.string, order)
    return found


class Tx(ConfigTx, ClusterTx, UiSessionTx):
    """One transaction over the store. Obtain it from `Store.tx`.

    Config revisions and the config-rollout bookkeeping live in `ConfigTx` (``_tx_config``).
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._postgres = conn.dialect.name == "postgresql"

    # -- helpers -------------------------------------------------------------------------

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self._postgres else sqlite.insert(table)

    def _driver_rows(self, stmt: sa.ClauseElement, params: dict[str, Any]) -> list[Any]:
        """Rows of one of the module's prebuilt queries, read with the driver's own cursor
        (in this transaction): per call this costs a tenth of `Connection.execute`, which
        matters where the runner reads a host for each of thousands of agents. Values come
        as the driver gives them (no SQLAlchemy type processing), in named tuples."""
        text, order = _driver_sql(self._conn, stmt)
        dbapi = self._conn.connection.driver_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        try:
            cursor.execute(text, params if order is None else tuple(params[k] for k in order))
            fetched = cursor.fetchall()
            row_type: Any = _ROW_TYPES.get(text)
            if row_type is None:
                names = [column[0] for column in cursor.description]
                row_type = _ROW_TYPES[text] = namedtuple("Row", names)
        except self._conn.dialect.loaded_dbapi.Error as error:
            # the same exceptions as Connection.execute (Store maps them to StoreUnavailable)
            raise sa.exc.DBAPIError.instance(
                text, params, error, self._conn.dialect.loaded_dbapi.Error
            ) from error
        finally:
            cursor.close()
        return [row_type._make(r) for r in fetched]

    def _executemany(self, stmt: sa.ClauseElement, rows: list[dict[str, Any]]) -> None:
        """Run one of the module's prebuilt statements (plain values, no type processing)
        for every row, straight through the driver's executemany."""
        text, order = _driver_sql(self._conn, stmt)
        if order is None:
            self._conn.exec_driver_sql(text, rows)
        else:
            self._conn.exec_driver_sql(text, [tuple(row[k] for k in order) for row in rows])

    @staticmethod
    def _decode_all(rows: Iterable[_Row], decode: Callable[[_Row], T], what: str) -> list[T]:
        out: list[T] = []
        for row in rows:
            try:
                out.append(decode(row))
            except _DECODE_ERRORS as error:
                log.warning("skipping stored %s %r that no longer decodes: %s", what, row[0], error)
        return out

    @staticmethod
    def _decode_one(row: _Row, decode: Callable[[_Row], T], what: str) -> T:
        try:
            return decode(row)
        except _DECODE_ERRORS as error:
            raise CorruptRecord(
                f"the stored {what} {row[0]!r} no longer decodes: {error}",
                hint="re-create it (for a service: headway apply -f service.yaml)",
            ) from None

    # -- services ------------------------------------------------------------------------

    @staticmethod
    def _service_from_row(row: _Row) -> ServiceSpec:
        return parse_service_spec(_loads_dict(row.spec))

    def put_service(self, spec: ServiceSpec, now: float) -> bool:
        """Store ``spec`` under its name; True if the service is new, False if updated."""
        text = _dumps(spec.model_dump(mode="json"))
        created = self._conn.execute(
            self._insert(services)
            .values(name=spec.name, spec=text, last_release=0, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(services.c.name)
        ).first()
        if created is not None:
            return True
        self._conn.execute(
            sa.update(services)
            .where(services.c.name == spec.name)
            .values(spec=text, updated_at=now)
        )
        return False

    def get_service(self, name: str) -> ServiceSpec:
        row = self._conn.execute(
            sa.select(services.c.name, services.c.spec).where(services.c.name == name)
        ).first()
        if row is None:
            raise NotFound(f"service {name!r} does not exist", hint=_APPLY_HINT)
        return self._decode_one(row, self._service_from_row, "service")

    def list_services(self) -> list[ServiceSpec]:
        rows = self._conn.execute(
            sa.select(services.c.name, services.c.spec).order_by(services.c.name)
        )
        return self._decode_all(rows, self._service_from_row, "service")

    def _require_service(self, name: str) -> None:
        found = self._conn.execute(
            sa.select(services.c.name).where(services.c.name == name)
        ).first()
        if found is None:
            raise NotFound(f"service {name!r} does not exist", hint=_APPLY_HINT)

    def service_current_release(self, name: str) -> int | None:
        row = self._conn.execute(
            sa.select(services.c.current_release).where(services.c.name == name)
        ).first()
        if row is None:
            raise NotFound(f"service {name!r} does not exist", hint=_APPLY_HINT)
        value: int | None = row.current_release
        return value

    def set_service_current_release(self, name: str, number: int | None) -> None:
        result = self._conn.execute(
            sa.update(services).where(services.c.name == name).values(current_release=number)
        )
        if result.rowcount == 0:
            raise NotFound(f"service {name!r} does not exist", hint=_APPLY_HINT)

    # -- artifacts -----------------------------------------------------------------------

    def put_artifact(self, ref: ArtifactRef, path: str, now: float) -> None:
        """Record an artifact's metadata; a digest already stored is left as it is."""
        self._conn.execute(
            self._insert(artifacts)
            .values(digest=ref.digest, size=ref.size, url=ref.url, path=path, created_at=now)
            .on_conflict_do_nothing(index_elements=["digest"])
        )

    def get_artifact(self, digest: str) -> tuple[ArtifactRef, str]:
        row = self._conn.execute(sa.select(artifacts).where(artifacts.c.digest == digest)).first()
        if row is None:
            raise NotFound(
                f"artifact {digest} is not in the server's store",
                hint="upload it first (POST /api/v1/artifacts) or refer to it by URL",
            )
        return ArtifactRef(digest=row.digest, size=row.size, url=row.url), str(row.path)

    # -- releases ------------------------------------------------------------------------

    @staticmethod
    def _release_from_row(row: _Row) -> Release:
        return Release(
            service=row.service,
            number=row.number,
            artifact=ArtifactRef(
                digest=row.artifact_digest, size=row.artifact_size, url=row.artifact_url
            ),
            params=_loads_dict(row.params),
            config=(
                None
                if row.config_digest is None
                else ConfigRevisionRef(
                    digest=row.config_digest,
                    size=row.config_size,
                    revision=row.config_revision,
                    source=ConfigSourceKind(row.config_source),
                )
            ),
            created_at=row.created_at,
            created_by=row.created_by,
            note=row.note,
        )

    def create_release(
        self,
        service: str,
        artifact: ArtifactRef,
        params: dict[str, str],
        created_by: str,
        note: str,
        now: float,
        config: ConfigRevisionRef | None = None,
    ) -> Release:
        """A new immutable release numbered one above the service's last (1, 2, 3, ...).

        The number comes from a counter on the service's row, incremented in
        this transaction: concurrent callers queue on that row and never get
        the same number, and a number is never reused.
        """
        number = self._conn.execute(
            sa.update(services)
            .where(services.c.name == service)
            .values(last_release=services.c.last_release + 1)
            .returning(services.c.last_release)
        ).scalar()
        if number is None:
            raise NotFound(f"service {service!r} does not exist", hint=_APPLY_HINT)
        release = Release(
            service=service,
            number=number,
            artifact=artifact,
            params=dict(params),
            config=config,
            created_at=now,
            created_by=created_by,
            note=note,
        )
        self._conn.execute(
            sa.insert(releases).values(
                service=service,
                number=number,
                artifact_digest=artifact.digest,
                artifact_size=artifact.size,
                artifact_url=artifact.url,
                params=_dumps(release.params),
                created_at=now,
                created_by=created_by,
                note=note,
                config_digest=config.digest if config else None,
                config_size=config.size if config else None,
                config_revision=config.revision if config else None,
                config_source=config.source.value if config else None,
            )
        )
        return release

    def get_release(self, service: str, number: int) -> Release:
        row = self._conn.execute(
            sa.select(releases).where(releases.c.service == service, releases.c.number == number)
        ).first()
        if row is None:
            self._require_service(service)
            existing = self._conn.execute(
                sa.select(releases.c.number)
                .where(releases.c.service == service)
                .order_by(releases.c.number)
            ).scalars()
            versions = ", ".join(f"v{n}" for n in existing)
            hint = (
                f"existing versions of {service}: {versions}"
                if versions
                else f"{service} has no releases yet; create one first"
            )
            raise NotFound(f"release v{number} of {service!r} does not exist", hint=hint)
        return self._decode_one(row, self._release_from_row, "release")

    def list_releases(self, service: str) -> list[Release]:
        """Every release of ``service``, oldest (v1) first; NotFound for an unknown service."""
        self._require_service(service)
        rows = self._conn.execute(
            sa.select(releases).where(releases.c.service == service).order_by(releases.c.number)
        )
        return self._decode_all(rows, self._release_from_row, "release")

    # -- hosts ---------------------------------------------------------------------------

    @staticmethod
    def _host_from_row(row: _Row) -> HostView:
        return HostView(
            name=row.name,
            service=row.service,
            address=row.address,
            labels=_loads_dict(row.labels),
            desired_release=row.desired_release,
            generation=row.generation,
            observed_release=row.observed_release,
            observed_generation=row.observed_generation,
            health=Health(row.health),
            connected=bool(row.connected),
            detail=row.detail,
            last_seen=row.last_seen,
            serve=bool(row.serve),
            config_applied=row.config_applied,
            config_on_disk=row.config_on_disk,
            config_drift=config_drift(row.config_applied, row.config_on_disk),
        )

    def upsert_host(
        self, name: str, service: str, address: str, labels: dict[str, str], now: float
    ) -> HostView:
        """Register or refresh a host (agent hello): connected, seen now; desired state kept."""
        labels_text = _dumps(labels)
        insert = self._insert(hosts).values(
            name=name,
            service=service,
            address=address,
            labels=labels_text,
            desired_release=None,
            generation=0,
            observed_release=None,
            observed_generation=0,
            health=Health.UNKNOWN.value,
            connected=True,
            detail="",
            last_seen=now,
            serve=True,
        )
        row = self._conn.execute(
            insert.on_conflict_do_update(
                index_elements=["name"],
                set_={
                    "service": service,
                    "address": address,
                    "labels": labels_text,
                    "connected": True,
                    "last_seen": now,
                },
            ).returning(*hosts.c)
        ).one()
        return self._decode_one(row, self._host_from_row, "host")

    def record_observation(
        self,
        name: str,
        release: int | None,
        generation: int,
        health: Health,
        detail: str,
        now: float,
        *,
        config_applied: str | None = None,
        config_on_disk: str | None = None,
    ) -> HostView:
        """Store what the host's agent reports; the host is connected and seen now.

        ``config_applied`` / ``config_on_disk``: the agent's config hashes (drift); None
        leaves the stored ones as they are.
        """
        values: dict[str, Any] = {
            "observed_release": release,
            "observed_generation": generation,
            "health": Health(health).value,
            "detail": detail,
            "connected": True,
            "last_seen": now,
        }
        if config_applied is not None:
            values["config_applied"] = config_applied[:200]
        if config_on_disk is not None:
            values["config_on_disk"] = config_on_disk[:200]
        row = self._conn.execute(
            sa.update(hosts)
            .where(hosts.c.name == name)
            .values(**values)
            .returning(*hosts.c)
        ).first()
        if row is None:
            raise NotFound(f"host {name!r} is not registered", hint=_HOST_HINT)
        return self._decode_one(row, self._host_from_row, "host")

    def record_observations(self, rows: Sequence[HostObservation], now: float) -> None:
        """Store many agent reports at once (one statement, executed for every row).

        Like `record_observation` for each row in order, except that a host not
        registered is ignored, and a report identical to the stored one (same
        release, generation, health, detail and config hashes, host connected)
        writes nothing: heartbeats cost no write, and ``last_seen`` then stays
        at the last change (connect, disconnect or a different report).
        """
        if not rows:
            return
        self._executemany(
            _OBSERVE,
            [
                {
                    "o_name": r.name,
                    "o_release": r.release,
                    "o_generation": r.generation,
                    "o_health": Health(r.health).value,
                    "o_detail": r.detail,
                    "o_applied": r.config_applied[:200],
                    "o_on_disk": r.config_on_disk[:200],
                    "o_now": now,
                }
                for r in rows
            ],
        )

    def set_hosts_desired(self, rows: Sequence[tuple[str, int | None, int]]) -> None:
        """`set_host_desired` for many ``(host, release, generation)`` at once, in order.

        Each applies only when its generation is above the stored one; a host not
        registered is ignored.
        """
        if rows:
            self._executemany(
                _SET_DESIRED, [{"d_name": n, "d_release": r, "d_generation": g} for n, r, g in rows]
            )

    def set_disconnected(self, name: str, now: float) -> None:
        """Mark the host's agent gone (last seen now); a host never registered is ignored."""
        self._conn.execute(
            sa.update(hosts).where(hosts.c.name == name).values(connected=False, last_seen=now)
        )

    def set_host_desired(self, name: str, release: int | None, generation: int) -> bool:
        """Point the host at ``release`` as of ``generation``.

        Applies only when ``generation`` is above the stored one, so a repeated
        or stale command changes nothing: True if applied, False if not.
        NotFound if the host is not registered.
        """
        result = self._conn.execute(
            _SET_DESIRED, {"d_name": name, "d_release": release, "d_generation": generation}
        )
        if result.rowcount == 1:
            return True
        exists = self._conn.execute(sa.select(hosts.c.name).where(hosts.c.name == name)).first()
        if exists is None:
            raise NotFound(f"host {name!r} is not registered", hint=_HOST_HINT)
        return False

    def set_host_serve(self, name: str, serve: bool) -> bool:
        """Put the host in load balancing (``serve``) or take it out; True if that changed it.

        Not a desired-state change: the generation stays, so the engine's own
        generations are unaffected. NotFound if the host is not registered.
        """
        result = self._conn.execute(
            sa.update(hosts)
            .where(hosts.c.name == name, hosts.c.serve != bool(serve))
            .values(serve=bool(serve))
        )
        if result.rowcount == 1:
            return True
        exists = self._conn.execute(sa.select(hosts.c.name).where(hosts.c.name == name)).first()
        if exists is None:
            raise NotFound(f"host {name!r} is not registered", hint=_HOST_HINT)
        return False

    def get_host(self, name: str) -> HostView:
        rows = self._driver_rows(_GET_HOST, {"h_name": name})
        row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"host {name!r} is not registered", hint=_HOST_HINT)
        return self._decode_one(row, self._host_from_row, "host")

    def list_hosts(self, service: str | None = None) -> list[HostView]:
        """Hosts ordered by name, all of them or those of ``service``."""
        query = sa.select(hosts).order_by(hosts.c.name)
        if service is not None:
            query = query.where(hosts.c.service == service)
        return self._decode_all(self._conn.execute(query), self._host_from_row, "host")

    # -- rollouts ------------------------------------------------------------------------

    @staticmethod
    def _rollout_from_row(row: _Row) -> tuple[RolloutSummary, dict[str, Any]]:
        summary = RolloutSummary.model_validate(_loads_dict(row.summary))
        return summary, _loads_dict(row.state)

    @staticmethod
    def _summary_from_row(row: _Row) -> RolloutSummary:
        return RolloutSummary.model_validate(_loads_dict(row.summary))

    def _active_clash(self, summary: RolloutSummary) -> Conflict:
        return Conflict(
            f"service {summary.service!r} already has a rollout in progress; "
            f"rollout {summary.id} was not started",
            hint="wait for the current rollout to finish, or abort it, then try again",
        )

    def create_rollout(self, summary: RolloutSummary, state: dict[str, Any] | str) -> None:
        """Store a new rollout; Conflict if its id exists or its service has an active one.

        The one-active-rollout rule is also a partial unique index, so two
        servers starting rollouts at once cannot both win. ``state`` may be given
        already encoded, as the JSON text of the object.
        """
        taken = self._conn.execute(
            sa.select(rollouts.c.id).where(rollouts.c.id == summary.id)
        ).first()
        if taken is not None:
            raise Conflict(f"rollout id {summary.id} is already used", hint="use a new id")
        if not summary.status.terminal:
            current = self._conn.execute(
                sa.select(rollouts.c.id, rollouts.c.status).where(
                    rollouts.c.service == summary.service,
                    rollouts.c.status.not_in(TERMINAL_STATUSES),
                )
            ).first()
            if current is not None:
                raise Conflict(
                    f"service {summary.service!r} already has rollout {current.id} "
                    f"({current.status}); only one rollout per service runs at a time",
                    hint="wait for it to finish, or abort it, then try again",
                )
        try:
            with self._conn.begin_nested():
                self._conn.execute(
                    sa.insert(rollouts).values(
                        id=summary.id,
                        service=summary.service,
                        status=summary.status.value,
                        summary=_dumps(summary.model_dump(mode="json")),
                        state=state if isinstance(state, str) else _dumps(state),
                        created_at=summary.created_at,
                        updated_at=summary.updated_at,
                    )
                )
        except sa.exc.IntegrityError:
            raise self._active_clash(summary) from None

    def save_rollout(self, summary: RolloutSummary, state: dict[str, Any] | str) -> None:
        """Replace the stored summary and state of rollout ``summary.id`` (NotFound if absent).

        ``state`` may be given already encoded, as the JSON text of the object.
        """
        try:
            with self._conn.begin_nested():
                result = self._conn.execute(
                    sa.update(rollouts)
                    .where(rollouts.c.id == summary.id)
                    .values(
                        status=summary.status.value,
                        summary=_dumps(summary.model_dump(mode="json")),
                        state=state if isinstance(state, str) else _dumps(state),
                        updated_at=summary.updated_at,
                    )
                )
        except sa.exc.IntegrityError:
            raise self._active_clash(summary) from None
        if result.rowcount == 0:
            raise NotFound(
                f"rollout {summary.id} does not exist", hint="create_rollout stores it first"
            )

    def get_rollout(self, rollout_id: str) -> tuple[RolloutSummary, dict[str, Any]]:
        row = self._conn.execute(
            sa.select(rollouts.c.id, rollouts.c.summary, rollouts.c.state).where(
                rollouts.c.id == rollout_id
            )
        ).first()
        if row is None:
            raise NotFound(
                f"rollout {rollout_id} does not exist",
                hint="check the id against the list of recent rollouts",
            )
        return self._decode_one(row, self._rollout_from_row, "rollout")

    def active_rollouts(self) -> list[tuple[RolloutSummary, dict[str, Any]]]:
        """Every rollout whose status is not terminal, oldest first."""
        rows = self._conn.execute(
            sa.select(rollouts.c.id, rollouts.c.summary, rollouts.c.state)
            .where(rollouts.c.status.not_in(TERMINAL_STATUSES))
            .order_by(rollouts.c.seq)
        )
        return self._decode_all(rows, self._rollout_from_row, "rollout")

    def active_rollout(self, service: str) -> tuple[RolloutSummary, dict[str, Any]] | None:
        row = self._conn.execute(
            sa.select(rollouts.c.id, rollouts.c.summary, rollouts.c.state).where(
                rollouts.c.service == service, rollouts.c.status.not_in(TERMINAL_STATUSES)
            )
        ).first()
        if row is None:
            return None
        return self._decode_one(row, self._rollout_from_row, "rollout")

    def list_rollouts(self, service: str | None = None, limit: int = 50) -> list[RolloutSummary]:
        """Rollout summaries, newest first (by creation time, then insertion order)."""
        query = (
            sa.select(rollouts.c.id, rollouts.c.summary)
            .order_by(rollouts.c.created_at.desc(), rollouts.c.seq.desc())
            .limit(max(limit, 0))
        )
        if service is not None:
            query = query.where(rollouts.c.service == service)
        return self._decode_all(self._conn.execute(query), self._summary_from_row, "rollout")

    # -- events --------------------------------------------------------------------------

    def append_events(self, new: Sequence[NewEvent]) -> None:
        """Append to the audit log in order; ids grow in commit order (see EVENTS_LOCK_KEY)."""
        if not new:
            return
        if self._postgres:
            self._conn.execute(sa.select(sa.func.pg_advisory_xact_lock(EVENTS_LOCK_KEY)))
        self._executemany(
            _APPEND_EVENT,
            [
                {
                    "e_ts": e.ts,
                    "e_kind": e.kind,
                    "e_message": e.message,
                    "e_service": e.service,
                    "e_rollout_id": e.rollout_id,
                    "e_host": e.host,
                    "e_actor": e.actor,
                }
                for e in new
            ],
        )

    def list_events(
        self,
        service: str | None = None,
        rollout_id: str | None = None,
        after: int = 0,
        limit: int = 500,
    ) -> list[Event]:
        """Events with id above ``after``, oldest first, optionally of one service/rollout."""
        query = sa.select(events).where(events.c.id > after).order_by(events.c.id)
        if service is not None:
            query = query.where(events.c.service == service)
        if rollout_id is not None:
            query = query.where(events.c.rollout_id == rollout_id)
        rows = self._conn.execute(query.limit(max(limit, 0)))
        return [
            Event(
                id=r.id,
                ts=r.ts,
                kind=r.kind,
                message=r.message,
                service=r.service,
                rollout_id=r.rollout_id,
                host=r.host,
                actor=r.actor,
            )
            for r in rows
        ]

    # -- outbox --------------------------------------------------------------------------

    def add_outbox(self, items: Sequence[OutboxItem]) -> None:
        """Queue actions in order; an ``action_id`` already stored (or repeated) is ignored."""
        seen: set[str] = set()
        rows: list[dict[str, Any]] = []
        for item in items:
            if item.action_id in seen:
                continue
            seen.add(item.action_id)
            rows.append(
                {
                    "x_action_id": item.action_id,
                    "x_rollout_id": item.rollout_id,
                    "x_payload": _dumps(item.payload),
                }
            )
        if rows:
            self._executemany(_ADD_OUTBOX_PG if self._postgres else _ADD_OUTBOX_SQLITE, rows)

    def pending_outbox(self, limit: int = 1000) -> list[OutboxItem]:
        """Actions not yet marked done, in the order they were added."""
        rows = self._conn.execute(
            sa.select(outbox.c.action_id, outbox.c.rollout_id, outbox.c.payload)
            .where(outbox.c.done == sa.false())
            .order_by(outbox.c.seq)
            .limit(max(limit, 0))
        )
        return self._decode_all(
            rows,
            lambda r: OutboxItem(r.action_id, r.rollout_id, _loads_dict(r.payload)),
            "outbox action",
        )

    def mark_done(self, action_ids: Sequence[str]) -> None:
        """Mark actions executed; unknown ids are ignored."""
        if not action_ids:
            return
        self._executemany(_MARK_DONE, [{"m_action_id": a} for a in dict.fromkeys(action_ids)])

    # -- meta ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        value: str | None = self._conn.execute(
            sa.select(meta.c.value).where(meta.c.key == key)
        ).scalar()
        return value

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            self._insert(meta)
            .values(key=key, value=value)
            .on_conflict_do_update(index_elements=["key"], set_={"value": value})
        )


__all__ = ["CorruptRecord", "Tx"]
