"""`ConfigTx`: the store's config revisions and config-rollout bookkeeping (part of `Tx`).

Kept apart from ``_tx.py`` so each file holds one idea; `Tx` inherits these
methods, so callers see one transaction object.

A config revision is content-addressed: its id is the first 12 hex digits
of the bundle's sha256, and storing the same bundle twice for a service
keeps the first record (its source, commit and time).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from headway.domain.models import ConfigRevision, ConfigSourceKind
from headway.errors import NotFound, SpecError
from headway.store._schema import config_revisions, meta, services

log = logging.getLogger("headway.store")

_HEX = re.compile(r"^[0-9a-f]{4,64}$")
_REVISION_HINT = "list them with: headway config list SERVICE"


def config_drift(applied: str, on_disk: str) -> bool:
    """Drift: the agent applied config files and what is on disk is no longer them.

    >>> config_drift("", ""), config_drift("abc", "abc"), config_drift("abc", "abd")
    (False, False, True)
    >>> config_drift("abc", "")    # the files were removed
    True
    """
    return bool(applied) and on_disk != applied


def revision_id(digest: str) -> str:
    """``sha256:0123456789abcdef...`` -> ``0123456789ab``."""
    return digest.removeprefix("sha256:")[:12]


def _revision_from_row(row: Any) -> ConfigRevision:
    files = json.loads(row.files)
    if not isinstance(files, list):
        raise ValueError("files is not a list")
    return ConfigRevision(
        id=row.id,
        service=row.service,
        digest=row.digest,
        size=row.size,
        source=ConfigSourceKind(row.source),
        git_commit=row.git_commit,
        committed_at=row.committed_at,
        origin=row.origin,
        files=[str(f) for f in files],
        created_at=row.created_at,
        created_by=row.created_by,
    )


class ConfigTx:
    """Config methods of `Tx` (which supplies the open connection)."""

    _conn: Connection
    _postgres: bool

    def _config_insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self._postgres else sqlite.insert(table)

    def _config_service_exists(self, service: str) -> None:
        found = self._conn.execute(sa.select(services.c.name).where(services.c.name == service)).first()
        if found is None:
            raise NotFound(
                f"service {service!r} does not exist", hint="create it with: headway apply -f service.yaml"
            )

    def put_config_revision(self, revision: ConfigRevision, path: str) -> tuple[ConfigRevision, bool]:
        """Store a revision of ``revision.service``; (the stored revision, True if new).

        A digest the service already has is left as first stored and returned.
        """
        self._config_service_exists(revision.service)
        created = self._conn.execute(
            self._config_insert(config_revisions)
            .values(
                service=revision.service,
                digest=revision.digest,
                id=revision.id,
                size=revision.size,
                source=revision.source.value,
                git_commit=revision.git_commit,
                committed_at=revision.committed_at,
                origin=revision.origin,
                files=json.dumps(list(revision.files), separators=(",", ":")),
                path=path,
                created_at=revision.created_at,
                created_by=revision.created_by,
            )
            .on_conflict_do_nothing(index_elements=["service", "digest"])
            .returning(config_revisions.c.digest)
        ).first()
        if created is not None:
            return revision, True
        return self.get_config_revision(revision.service, revision.digest), False

    def get_config_revision(self, service: str, ref: str) -> ConfigRevision:
        """A revision of ``service`` by digest (``sha256:...``), id or digest prefix (4+ hex
        digits), or git commit prefix (7+ hex digits). NotFound, or SpecError if ambiguous."""
        text = ref.strip().lower()
        hex_part = text.removeprefix("sha256:")
        if not _HEX.match(hex_part):
            raise SpecError(
                f"{ref!r} is not a config revision",
                hint="give a revision id (12 hex digits), a sha256:... digest or a git commit; "
                + _REVISION_HINT,
            )
        query = sa.select(config_revisions).where(config_revisions.c.service == service)
        rows = list(
            self._conn.execute(
                query.where(config_revisions.c.digest.startswith("sha256:" + hex_part, autoescape=True))
                .order_by(config_revisions.c.created_at.desc())
                .limit(2)
            )
        )
        if not rows and len(hex_part) >= 7 and not text.startswith("sha256:"):
            rows = list(
                self._conn.execute(
                    query.where(config_revisions.c.git_commit.startswith(hex_part, autoescape=True))
                    .order_by(config_revisions.c.created_at.desc())
                    .limit(2)
                )
            )
        if not rows:
            self._config_service_exists(service)
            raise NotFound(f"{service} has no config revision {ref!r}", hint=_REVISION_HINT)
        if len(rows) > 1 and len({r.digest for r in rows}) > 1:
            raise SpecError(
                f"{ref!r} matches more than one config revision of {service}",
                hint="give more digits, or the full sha256:... digest",
            )
        try:
            return _revision_from_row(rows[0])
        except (ValueError, TypeError, ValidationError) as error:
            raise SpecError(
                f"the stored config revision {rows[0].id} of {service} no longer decodes: {error}",
                hint="push the files again (headway config push)",
            ) from None

    def config_revision_path(self, digest: str) -> str:
        """Where the bundle with ``digest`` is kept (whichever service stored it)."""
        path: str | None = self._conn.execute(
            sa.select(config_revisions.c.path).where(config_revisions.c.digest == digest).limit(1)
        ).scalar()
        if path is None:
            raise NotFound(
                f"config bundle {digest} is not in the server's store",
                hint="push it first (headway config push SERVICE DIR)",
            )
        return path

    def list_config_revisions(self, service: str, limit: int = 50) -> list[ConfigRevision]:
        """The revisions of ``service``, newest first; rows that no longer decode are skipped."""
        self._config_service_exists(service)
        rows = self._conn.execute(
            sa.select(config_revisions)
            .where(config_revisions.c.service == service)
            .order_by(config_revisions.c.created_at.desc(), config_revisions.c.digest)
            .limit(max(limit, 0))
        )
        out: list[ConfigRevision] = []
        for row in rows:
            try:
                out.append(_revision_from_row(row))
            except (ValueError, TypeError, ValidationError) as error:
                log.warning("skipping stored config revision %r that no longer decodes: %s", row.id, error)
        return out

    def swap_meta(self, key: str, expected: str | None, value: str) -> bool:
        """Set ``key`` to ``value`` only if it holds ``expected`` (None: only if absent).

        True if this transaction made the change. Two servers following the same
        Git branch use it so that one commit makes one release.
        """
        if expected is None:
            row = self._conn.execute(
                self._config_insert(meta)
                .values(key=key, value=value)
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(meta.c.key)
            ).first()
            return row is not None
        result = self._conn.execute(
            sa.update(meta).where(meta.c.key == key, meta.c.value == expected).values(value=value)
        )
        return result.rowcount == 1

    def delete_meta(self, key: str) -> None:
        self._conn.execute(sa.delete(meta).where(meta.c.key == key))


__all__ = ["ConfigTx", "config_drift", "revision_id"]
