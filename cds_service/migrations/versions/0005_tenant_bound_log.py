"""Answers and feedback bound to their caller; chain entries of format 2 bind their time.

- a stored answer is replayed only for the same issuer, tenant, service, hookInstance and request:
  the unique index over answered calls covers all five, and `reuse_of` names the earlier answer when a
  hookInstance comes back with another request or from another caller;
- feedback records its tenant, so snoozes are kept apart per issuer and tenant;
- `log_chain.format`: 1 for the entries written before this revision, 2 for those after, whose keyed
  hash also covers the entry's time and whose payload covers the columns added here;
- `anchors`: every head written to the anchor file is also listed in the database, so a missing or
  shortened anchor file is noticed.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ANSWERED = sa.text("status_code = 200")


def upgrade() -> None:
    op.drop_index("uq_decisions_answered", table_name="decisions")
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("reuse_of", sa.Integer(), nullable=True))
    op.create_index(
        "uq_decisions_answered",
        "decisions",
        ["service_id", "hook_instance", "issuer", sa.text("coalesce(tenant, '')"), "input_digest"],
        unique=True,
        sqlite_where=_ANSWERED,
        postgresql_where=_ANSWERED,
    )
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("tenant", sa.String(200), nullable=True))
    with op.batch_alter_table("log_chain") as batch:
        batch.add_column(sa.Column("format", sa.SmallInteger(), nullable=False, server_default="1"))
    op.create_table(
        "anchors",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("anchors")
    with op.batch_alter_table("log_chain") as batch:
        batch.drop_column("format")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("tenant")
    op.drop_index("uq_decisions_answered", table_name="decisions")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("reuse_of")
    op.create_index(
        "uq_decisions_answered",
        "decisions",
        ["service_id", "hook_instance"],
        unique=True,
        sqlite_where=_ANSWERED,
        postgresql_where=_ANSWERED,
    )
