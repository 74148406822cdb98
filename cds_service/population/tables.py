"""Population runs: a job, its chunks and one assessment per patient."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from cds_service.database import Base, utcnow


class PopulationJob(Base):
    """One scoring of a Bulk Data export: from files, or exported from a FHIR server first."""

    __tablename__ = "population_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(20))  # exporting | splitting | scoring | finishing | done | failed
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    patients_scored: Mapped[int] = mapped_column(Integer, default=0)
    patients_failed: Mapped[int] = mapped_column(Integer, default=0)
    worklisted: Mapped[int] = mapped_column(Integer, default=0)
    model_id: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    model_hash: Mapped[str] = mapped_column(String(80))
    as_of: Mapped[str] = mapped_column(String(10))
    error: Mapped[str | None] = mapped_column(String(2000))


class PopulationChunk(Base):
    """A few hundred patients scored by one task; done once, whatever the redeliveries."""

    __tablename__ = "population_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("population_jobs.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(20))  # pending | done
    patients: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PopulationAssessment(Base):
    """One patient's assessment within a job. The worklist needs the patient id, so it is kept here."""

    __tablename__ = "population_assessments"
    __table_args__ = (UniqueConstraint("job_id", "patient_id", name="uq_population_patient"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("population_jobs.id"), index=True)
    chunk: Mapped[int] = mapped_column(Integer)
    patient_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))  # scored | error
    eligible: Mapped[bool | None] = mapped_column(Boolean)
    band: Mapped[str | None] = mapped_column(String(20))
    score: Mapped[float | None] = mapped_column(Float)
    suppressed: Mapped[bool | None] = mapped_column(Boolean)
    worklist: Mapped[bool] = mapped_column(Boolean, default=False)
    assessment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(String(2000))
