"""`UiSessionTx`: the web UI's sign-in sessions (part of `Tx`).

Rows are keyed by the sha256 of the cookie value; the cookie itself is never
stored. Times are epoch seconds of the server that wrote them.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from headway.store._schema import ui_sessions


@dataclass(frozen=True)
class UiSessionRow:
    key: str
    actor: str
    csrf: str
    created_at: float
    seen_at: float


class UiSessionTx:
    _conn: Connection

    def put_ui_session(self, row: UiSessionRow) -> None:
        self._conn.execute(
            sa.insert(ui_sessions).values(
                key=row.key, actor=row.actor, csrf=row.csrf, created_at=row.created_at, seen_at=row.seen_at
            )
        )

    def get_ui_session(self, key: str) -> UiSessionRow | None:
        row = self._conn.execute(sa.select(ui_sessions).where(ui_sessions.c.key == key)).first()
        if row is None:
            return None
        return UiSessionRow(row.key, row.actor, row.csrf, row.created_at, row.seen_at)

    def touch_ui_session(self, key: str, seen_at: float) -> None:
        self._conn.execute(sa.update(ui_sessions).where(ui_sessions.c.key == key).values(seen_at=seen_at))

    def end_ui_session(self, key: str) -> None:
        self._conn.execute(sa.delete(ui_sessions).where(ui_sessions.c.key == key))

    def expire_ui_sessions(self, seen_before: float, created_before: float, keep: int) -> None:
        """Forget sessions idle since ``seen_before`` or made before ``created_before``, and
        all but the newest ``keep``."""
        self._conn.execute(
            sa.delete(ui_sessions).where(
                sa.or_(ui_sessions.c.seen_at < seen_before, ui_sessions.c.created_at < created_before)
            )
        )
        newest = sa.select(ui_sessions.c.key).order_by(ui_sessions.c.created_at.desc()).limit(keep)
        self._conn.execute(sa.delete(ui_sessions).where(ui_sessions.c.key.not_in(newest)))
