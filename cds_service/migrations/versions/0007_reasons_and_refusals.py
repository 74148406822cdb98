"""Why each decision came out as it did, and the calls refused before any decision.

- `decisions.reason`: a stable code for why the call got its cards or none (`hooks.services.REASONS`,
  "snoozed", or the error code of a failed call); entries of chain format 3 cover it, and in an older
  entry's row it must stay empty;
- `refused_calls`: calls whose EHR token was refused (401), counted per hour, claimed issuer (when it is
  one the service trusts; '' otherwise) and reason code. Never the token;
- `merkle_nodes`: the Merkle tree (RFC 9162) over the chain's entries, as the hashes of its perfect subtrees;
- `tree_checkpoints`: the signed tree heads (C2SP tlog-checkpoint notes, Ed25519) the anchoring task writes.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("reason", sa.String(40), nullable=True))
    op.create_table(
        "refused_calls",
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("issuer", sa.String(500), primary_key=True),
        sa.Column("reason_code", sa.String(60), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
    )
    op.create_table(
        "merkle_nodes",
        sa.Column("level", sa.SmallInteger(), primary_key=True),
        sa.Column("idx", sa.BigInteger(), primary_key=True),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "tree_checkpoints",
        sa.Column("size", sa.BigInteger(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("root_hash", sa.String(64), nullable=False),
        sa.Column("note", sa.String(2000), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tree_checkpoints")
    op.drop_table("merkle_nodes")
    op.drop_table("refused_calls")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("reason")
