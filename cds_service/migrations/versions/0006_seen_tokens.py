"""The JWT replay memory in the database, for deployments without Redis.

- `seen_tokens`: one row per EHR-signed JWT accepted, keyed by the SHA-256 (hex) of `issuer|jti`
  (never the token), until `expires_at` (seconds since the epoch); every process on the database sees
  it, so a token is accepted once across gunicorn workers and hosts. Expired rows are deleted now and then.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "seen_tokens",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_seen_tokens_expires_at", "seen_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_seen_tokens_expires_at", table_name="seen_tokens")
    op.drop_table("seen_tokens")
