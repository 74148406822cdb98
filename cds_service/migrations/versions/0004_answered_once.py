"""A hook call is answered once: a unique index over the decisions that answered (status 200).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "uq_decisions_answered",
        "decisions",
        ["service_id", "hook_instance"],
        unique=True,
        sqlite_where=sa.text("status_code = 200"),
        postgresql_where=sa.text("status_code = 200"),
    )


def downgrade() -> None:
    op.drop_index("uq_decisions_answered", table_name="decisions")
