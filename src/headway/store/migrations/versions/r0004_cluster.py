"""Several servers on one database: the runner's lease and the request inbox.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

- ``leases``: one row per lease (``runner``): who holds it, its fencing token
  (raised by one at every change of holder) and when it expires (database clock);
- ``inbox``: requests a server that does not lead hands to the leader (agent
  reports, operator commands), with the leader's reply.

Frozen: later changes go in new revisions, never here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    leases = op.create_table(
        "leases",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("about", sa.Text(), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("acquired_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.bulk_insert(
        leases,
        [{"name": "runner", "holder": "", "about": "", "token": 0, "expires_at": 0.0, "acquired_at": 0.0}],
    )
    op.create_table(
        "inbox",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("wants_reply", sa.Boolean(), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox")),
    )
    op.create_index("ix_inbox_done", "inbox", ["done", "id"])


def downgrade() -> None:
    op.drop_index("ix_inbox_done", table_name="inbox")
    op.drop_table("inbox")
    op.drop_table("leases")
