"""Configuration releases: config revisions, the config a release carries, drift hashes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-05-08

- ``config_revisions``: config bundles of each service, content-addressed by digest;
- ``releases.config_*``: the revision a release carries (NULL for releases made before);
- ``hosts.config_applied`` / ``config_on_disk``: the hashes an agent reports, for drift.

Every addition is nullable or has a default, so existing rows read as before.
Frozen: later changes go in new revisions, never here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "config_revisions",
        sa.Column("service", sa.Text(), nullable=False),
        sa.Column("digest", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("git_commit", sa.Text(), nullable=False),
        sa.Column("committed_at", sa.Double(), nullable=True),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("files", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("service", "digest", name="pk_config_revisions"),
        sa.ForeignKeyConstraint(["service"], ["services.name"], name="fk_config_revisions_service_services"),
    )
    op.create_index("ix_config_revisions_service_created", "config_revisions", ["service", "created_at"])
    op.create_index("ix_config_revisions_digest", "config_revisions", ["digest"])
    # SQLite adds nullable columns, and NOT NULL ones with a default, in place.
    op.add_column("releases", sa.Column("config_digest", sa.Text(), nullable=True))
    op.add_column("releases", sa.Column("config_size", sa.BigInteger(), nullable=True))
    op.add_column("releases", sa.Column("config_revision", sa.Text(), nullable=True))
    op.add_column("releases", sa.Column("config_source", sa.Text(), nullable=True))
    op.add_column("hosts", sa.Column("config_applied", sa.Text(), nullable=False, server_default=""))
    op.add_column("hosts", sa.Column("config_on_disk", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("config_on_disk")
        batch.drop_column("config_applied")
    with op.batch_alter_table("releases") as batch:
        for column in ("config_source", "config_revision", "config_size", "config_digest"):
            batch.drop_column(column)
    op.drop_index("ix_config_revisions_digest", "config_revisions")
    op.drop_index("ix_config_revisions_service_created", "config_revisions")
    op.drop_table("config_revisions")
