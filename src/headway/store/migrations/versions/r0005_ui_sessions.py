"""Web UI sign-in sessions in the database, so every server knows them and a restart keeps them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

- ``ui_sessions``: one row per signed-in browser, keyed by the sha256 of its cookie (the
  cookie itself is never stored), with its audit name, CSRF token, and times (epoch seconds).

Frozen: later changes go in new revisions, never here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("csrf", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("seen_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_ui_sessions")),
    )
    op.create_index("ix_ui_sessions_created_at", "ui_sessions", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_ui_sessions_created_at", table_name="ui_sessions")
    op.drop_table("ui_sessions")
