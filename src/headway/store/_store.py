"""`Store`: the engine, its connection settings, transactions and migrations.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``,
so a committed transaction survives a power cut, and foreign keys on.
Every transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock
at once, so a reader never fails later when it tries to write), and one
in-process lock hands transactions to threads in turn instead of leaving
them to SQLite's sleeping busy handler; ``busy_timeout`` still covers other
processes opening the same file.

PostgreSQL runs at READ COMMITTED through psycopg 3; the rules that need
more (release numbers, one active rollout per service, event id order) are
enforced by row locks, a partial unique index and an advisory lock.

Connection failures become `StoreUnavailable` with a hint; nothing is
retried here: callers decide whether to retry or to stop advancing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from headway.errors import SpecError, StoreUnavailable
from headway.store._tx import Tx

BUSY_TIMEOUT = 10.0  # seconds a SQLite transaction waits for the write lock
CONNECT_TIMEOUT = 5  # seconds to reach PostgreSQL
MIGRATE_LOCK_KEY = 0x68_65_61_64_77_61_79_01  # serialises migrations of servers starting together

_DISCONNECTS = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event open transactions instead of pysqlite.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    """The persistent state of a Headway server.

    ``url`` is ``sqlite:////abs/path.db`` (the parent directory is created)
    or ``postgresql+psycopg://user@host:5432/db``. Nothing connects until the
    first `migrate` or `tx`. Safe to share between threads; each `tx` runs
    on its own connection.
    """

    def __init__(self, url: str, *, application_name: str = "") -> None:
        try:
            parsed = make_url(url)
        except sa.exc.ArgumentError:
            raise SpecError(
                f"{url!r} is not a database URL",
                hint="use sqlite:////absolute/path.db or postgresql+psycopg://user@host:5432/db",
            ) from None
        self._where = parsed.render_as_string(hide_password=True)
        self._lock: threading.Lock | None = None
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:"):
                # One shared connection: the in-process lock serialises its use.
                self._engine = sa.create_engine(
                    "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
                )
            else:
                try:
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise StoreUnavailable(
                        f"cannot create the directory of the database {database}: {error}",
                        hint="choose a path this user can write, or create the directory",
                    ) from None
                self._engine = sa.create_engine(
                    parsed, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT}
                )
            event.listen(self._engine, "connect", _sqlite_on_connect)
            event.listen(self._engine, "begin", _sqlite_on_begin)
            self._lock = threading.Lock()
        elif backend == "postgresql":
            connect_args: dict[str, Any] = {}
            if "connect_timeout" not in parsed.query:
                connect_args["connect_timeout"] = CONNECT_TIMEOUT
            if application_name:  # names this server's sessions, so a successor can end them
                connect_args["application_name"] = application_name
            self._engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
        else:
            raise SpecError(
                f"database {backend!r} is not supported",
                hint="use sqlite:////absolute/path.db or postgresql+psycopg://user@host:5432/db",
            )
        self._postgres = backend == "postgresql"
        self._url = parsed
        self._connect_args = connect_args if self._postgres else {}
        self._schema: str | None = None

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    def _unavailable(self, error: Exception) -> StoreUnavailable:
        reason = str(getattr(error, "orig", error) or error).strip().splitlines()
        return StoreUnavailable(
            f"the database at {self._where} cannot be used: {reason[0] if reason else error}",
            hint="check that the database is running and reachable (and the SQLite file "
            "writable); nothing advanced; retry when it is back",
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        lock = self._lock
        if lock is not None and not lock.acquire(timeout=BUSY_TIMEOUT):
            raise StoreUnavailable(
                f"the database at {self._where} stayed busy for {BUSY_TIMEOUT:g}s",
                hint="another transaction is holding it (a tx opened inside another tx on "
                "the same thread waits forever); retry",
            )
        try:
            try:
                conn = self._engine.connect()
            except _DISCONNECTS as error:
                raise self._unavailable(error) from None
            with conn:
                try:
                    with conn.begin():
                        yield conn
                except _DISCONNECTS as error:
                    raise self._unavailable(error) from error
        finally:
            if lock is not None:
                lock.release()

    def tx(self, *, fence: int | None = None) -> contextlib.AbstractContextManager[Tx]:
        """One transaction: committed when the block ends, rolled back if it raises.

        With ``fence``, the transaction first checks that the runner's lease still
        carries that fencing token and raises `Fenced` otherwise, before any write
        (`ClusterTx.check_fence`): the leader's runner passes its token every time.
        """
        return self._tx(fence)

    @contextlib.contextmanager
    def _tx(self, fence: int | None) -> Iterator[Tx]:
        with self._transaction() as conn:
            tx = Tx(conn)
            if fence is not None:
                tx.check_fence(fence)
            yield tx

    @property
    def shared(self) -> bool:
        """True when several servers may use this database at once (PostgreSQL)."""
        return self._postgres

    def schema(self) -> str:
        """The schema the tables live in (PostgreSQL ``current_schema()``; "main" on SQLite)."""
        if self._schema is None:
            if not self._postgres:
                self._schema = "main"
            else:
                with self._transaction() as conn:
                    self._schema = str(conn.exec_driver_sql("SELECT current_schema()").scalar_one())
        return self._schema

    def libpq_params(self) -> dict[str, Any]:
        """Connection parameters for a raw psycopg connection to the same PostgreSQL
        (the election session and the LISTEN session live outside the pool)."""
        url = self._url
        params: dict[str, Any] = {
            key: value
            for key, value in {
                "host": url.host,
                "port": url.port,
                "user": url.username,
                "password": url.password,
                "dbname": url.database,
            }.items()
            if value is not None
        }
        params.update({k: v for k, v in url.query.items() if isinstance(v, str)})
        params.update(self._connect_args)
        return params

    def migrate(self) -> None:
        """Bring the schema to the newest revision (``alembic upgrade head``); idempotent."""
        config = Config()
        config.set_main_option("script_location", "headway.store:migrations")
        config.set_main_option("path_separator", "os")
        with self._transaction() as conn:
            if self._postgres:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATE_LOCK_KEY)))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        """Close every pooled connection; the store can still be used (it reconnects)."""
        self._engine.dispose()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for tests and maintenance scripts."""
        return self._engine
