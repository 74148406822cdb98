"""Decision log: decisions, issued cards and feedback.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("hook", sa.String(100)),
        sa.Column("hook_instance", sa.String(200)),
        sa.Column("issuer", sa.String(500)),
        sa.Column("tenant", sa.String(200)),
        sa.Column("user_id", sa.String(500)),
        sa.Column("patient_pseudonym", sa.String(64)),
        sa.Column("model_id", sa.String(100)),
        sa.Column("model_version", sa.String(50)),
        sa.Column("model_hash", sa.String(80)),
        sa.Column("band", sa.String(20)),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("card_uuids", sa.JSON(), nullable=False),
        sa.Column("suggestion_uuids", sa.JSON(), nullable=False),
        sa.Column("assessment", sa.JSON()),
        sa.Column("cards", sa.JSON(), nullable=False),
        sa.Column("input_digest", sa.String(80)),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.UniqueConstraint("service_id", "hook_instance", name="uq_decisions_service_instance"),
    )
    op.create_index("ix_decisions_created_at", "decisions", ["created_at"])
    op.create_index("ix_decisions_patient_pseudonym", "decisions", ["patient_pseudonym"])
    op.create_table(
        "issued_cards",
        sa.Column("card_uuid", sa.String(100), primary_key=True),
        sa.Column("decision_id", sa.Integer(), sa.ForeignKey("decisions.id"), nullable=False),
    )
    op.create_index("ix_issued_cards_decision_id", "issued_cards", ["decision_id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decision_id", sa.Integer(), sa.ForeignKey("decisions.id"), nullable=False),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("card_uuid", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("outcome_timestamp", sa.String(40), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
        sa.Column("override_code", sa.String(100)),
        sa.Column("override_system", sa.String(200)),
        sa.Column("override_comment", sa.String(2000)),
        sa.Column("issuer", sa.String(500)),
        sa.Column("patient_pseudonym", sa.String(64)),
        sa.UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_item"),
    )
    op.create_index("ix_feedback_decision_id", "feedback", ["decision_id"])
    op.create_index("ix_feedback_card_uuid", "feedback", ["card_uuid"])
    op.create_index("ix_feedback_patient_pseudonym", "feedback", ["patient_pseudonym"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("issued_cards")
    op.drop_table("decisions")
