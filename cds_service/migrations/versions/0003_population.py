"""Population scoring: jobs, chunks and per-patient assessments.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "population_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(2000), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("chunks_total", sa.Integer(), nullable=False),
        sa.Column("chunks_done", sa.Integer(), nullable=False),
        sa.Column("patients_scored", sa.Integer(), nullable=False),
        sa.Column("patients_failed", sa.Integer(), nullable=False),
        sa.Column("worklisted", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(100), nullable=False),
        sa.Column("model_version", sa.String(50), nullable=False),
        sa.Column("model_hash", sa.String(80), nullable=False),
        sa.Column("as_of", sa.String(10), nullable=False),
        sa.Column("error", sa.String(2000)),
    )
    op.create_table(
        "population_chunks",
        sa.Column("job_id", sa.String(36), sa.ForeignKey("population_jobs.id"), primary_key=True),
        sa.Column("number", sa.Integer(), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("patients", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "population_assessments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("population_jobs.id"), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("eligible", sa.Boolean()),
        sa.Column("band", sa.String(20)),
        sa.Column("score", sa.Float()),
        sa.Column("suppressed", sa.Boolean()),
        sa.Column("worklist", sa.Boolean(), nullable=False),
        sa.Column("assessment", sa.JSON()),
        sa.Column("error", sa.String(2000)),
        sa.UniqueConstraint("job_id", "patient_id", name="uq_population_patient"),
    )
    op.create_index("ix_population_assessments_job_id", "population_assessments", ["job_id"])


def downgrade() -> None:
    op.drop_table("population_assessments")
    op.drop_table("population_chunks")
    op.drop_table("population_jobs")
