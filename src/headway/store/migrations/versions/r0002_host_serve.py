"""Hosts get a serve flag: should the host be in load balancing (readiness balancers).

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-04

Every existing host serves (TRUE), as it did before the flag existed.
Frozen: later changes go in new revisions, never here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # SQLite adds a NOT NULL column with a default in place (no table copy needed).
    op.add_column(
        "hosts", sa.Column("serve", sa.Boolean(), nullable=False, server_default=sa.true())
    )


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("serve")
