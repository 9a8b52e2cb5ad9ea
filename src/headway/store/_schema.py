"""The tables the store queries, as SQLAlchemy Core metadata.

This mirrors the head of the Alembic migrations in ``migrations/versions``;
the migrations, not this module, create and change the schema.
``tests/store`` checks that the two agree.

JSON values (specs, labels, params, rollout state, outbox payloads) are
kept as text the store encodes and decodes itself, so that a malformed
value in one row is a logged skip rather than a crash while fetching.
"""

from __future__ import annotations

import sqlalchemy as sa

from headway.domain.models import RolloutStatus

metadata = sa.MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "ix": "ix_%(table_name)s_%(column_0_name)s",
    }
)

# A 64-bit autoincrementing key that is still SQLite's INTEGER PRIMARY KEY (the rowid).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

TERMINAL_STATUSES = tuple(sorted(s.value for s in RolloutStatus if s.terminal))

# One non-terminal rollout per service, enforced by a partial unique index.
# Written as "not terminal" so that a status added later without a migration
# counts as active: the index then refuses too much, never too little.
ACTIVE_ROLLOUT_WHERE = "status NOT IN ({})".format(", ".join(f"'{s}'" for s in TERMINAL_STATUSES))

services = sa.Table(
    "services",
    metadata,
    sa.Column("name", sa.Text(), primary_key=True),
    sa.Column("spec", sa.Text(), nullable=False),
    sa.Column("current_release", sa.Integer(), nullable=True),
    sa.Column("last_release", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("digest", sa.Text(), primary_key=True),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
)

releases = sa.Table(
    "releases",
    metadata,
    sa.Column("service", sa.Text(), sa.ForeignKey("services.name"), primary_key=True),
    sa.Column("number", sa.Integer(), primary_key=True),
    sa.Column("artifact_digest", sa.Text(), nullable=False),
    sa.Column("artifact_size", sa.BigInteger(), nullable=False),
    sa.Column("artifact_url", sa.Text(), nullable=False),
    sa.Column("params", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Column("created_by", sa.Text(), nullable=False),
    sa.Column("note", sa.Text(), nullable=False),
    # revision 0003: the config revision the release carries (all NULL: none)
    sa.Column("config_digest", sa.Text(), nullable=True),
    sa.Column("config_size", sa.BigInteger(), nullable=True),
    sa.Column("config_revision", sa.Text(), nullable=True),
    sa.Column("config_source", sa.Text(), nullable=True),
)

hosts = sa.Table(
    "hosts",
    metadata,
    sa.Column("name", sa.Text(), primary_key=True),
    sa.Column("service", sa.Text(), nullable=False),
    sa.Column("address", sa.Text(), nullable=False),
    sa.Column("labels", sa.Text(), nullable=False),
    sa.Column("desired_release", sa.Integer(), nullable=True),
    sa.Column("generation", sa.BigInteger(), nullable=False),
    sa.Column("observed_release", sa.Integer(), nullable=True),
    sa.Column("observed_generation", sa.BigInteger(), nullable=False),
    sa.Column("health", sa.Text(), nullable=False),
    sa.Column("connected", sa.Boolean(), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.Column("last_seen", sa.Double(), nullable=False),
    sa.Column("serve", sa.Boolean(), nullable=False, server_default=sa.true()),  # revision 0002
    sa.Column("config_applied", sa.Text(), nullable=False, server_default=""),  # revision 0003
    sa.Column("config_on_disk", sa.Text(), nullable=False, server_default=""),  # revision 0003
    sa.Index("ix_hosts_service", "service"),
)

# revision 0003: config bundles by service, content-addressed (a digest is stored once per
# service; its file lives in <state_dir>/configs/<hex>.tar.gz)
config_revisions = sa.Table(
    "config_revisions",
    metadata,
    sa.Column("service", sa.Text(), sa.ForeignKey("services.name"), primary_key=True),
    sa.Column("digest", sa.Text(), primary_key=True),
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
    sa.Index("ix_config_revisions_service_created", "service", "created_at"),
    sa.Index("ix_config_revisions_digest", "digest"),
)

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text(), nullable=False, unique=True),
    sa.Column("service", sa.Text(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("summary", sa.Text(), nullable=False),
    sa.Column("state", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
    sa.Index("ix_rollouts_service_created", "service", "created_at"),
    sa.Index(
        "ux_rollouts_one_active",
        "service",
        unique=True,
        sqlite_where=sa.text(ACTIVE_ROLLOUT_WHERE),
        postgresql_where=sa.text(ACTIVE_ROLLOUT_WHERE),
    ),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Double(), nullable=False),
    sa.Column("kind", sa.Text(), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("service", sa.Text(), nullable=False),
    sa.Column("rollout_id", sa.Text(), nullable=False),
    sa.Column("host", sa.Text(), nullable=False),
    sa.Column("actor", sa.Text(), nullable=False),
    sa.Index("ix_events_service", "service"),
    sa.Index("ix_events_rollout_id", "rollout_id"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("action_id", sa.Text(), nullable=False, unique=True),
    sa.Column("rollout_id", sa.Text(), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("done", sa.Boolean(), nullable=False),
    sa.Index("ix_outbox_pending", "done", "seq"),
)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.Text(), primary_key=True),
    sa.Column("value", sa.Text(), nullable=False),
)

# revision 0004: the runner's lease (fencing token) and the inbox of forwarded requests
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.Text(), primary_key=True),
    sa.Column("holder", sa.Text(), nullable=False),
    sa.Column("about", sa.Text(), nullable=False),
    sa.Column("token", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", sa.Double(), nullable=False),
    sa.Column("acquired_at", sa.Double(), nullable=False),
)

inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("sender", sa.Text(), nullable=False),
    sa.Column("kind", sa.Text(), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("wants_reply", sa.Boolean(), nullable=False),
    sa.Column("done", sa.Boolean(), nullable=False),
    sa.Column("reply", sa.Text(), nullable=True),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Index("ix_inbox_done", "done", "id"),
)

# revision 0005: web UI sign-in sessions (key: sha256 of the cookie value)
ui_sessions = sa.Table(
    "ui_sessions",
    metadata,
    sa.Column("key", sa.Text(), primary_key=True),
    sa.Column("actor", sa.Text(), nullable=False),
    sa.Column("csrf", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Column("seen_at", sa.Double(), nullable=False),
    sa.Index("ix_ui_sessions_created_at", "created_at"),
)
