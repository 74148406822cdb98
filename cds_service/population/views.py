"""Population job status for operators and auditors: GET /population/jobs/{id}."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from cds_service.auditor.accounts import Auditor, auditor_required
from cds_service.components import components
from cds_service.errors import ApiError
from cds_service.population.tables import PopulationJob

bp = Blueprint("population", __name__, url_prefix="/population")

JOB_FIELDS = (
    "id",
    "created_at",
    "updated_at",
    "status",
    "chunks_total",
    "chunks_done",
    "patients_scored",
    "patients_failed",
    "worklisted",
    "model_id",
    "model_version",
    "model_hash",
    "as_of",
    "error",
)


def job_summary(row: Any) -> dict[str, Any]:
    out = {name: row[name] for name in JOB_FIELDS}
    for name in ("created_at", "updated_at"):
        if isinstance(out[name], datetime):
            out[name] = out[name].isoformat()
    return out


def _engine() -> Any:
    return components().engine


@bp.get("/jobs")
@auditor_required(api=True)
def list_jobs(auditor: Auditor) -> Response:
    with components().engine.connect() as connection:
        rows = connection.execute(select(PopulationJob).order_by(PopulationJob.created_at.desc()).limit(100)).mappings().all()
    components().decision_log.record_access(auditor.username, "api.population.jobs", {})
    return jsonify({"jobs": [job_summary(row) for row in rows]})


@bp.get("/jobs/<job_id>")
@auditor_required(api=True)
def get_job(job_id: str, auditor: Auditor) -> Response:
    with components().engine.connect() as connection:
        row = connection.execute(select(PopulationJob).where(PopulationJob.id == job_id)).mappings().first()
    if row is None:
        raise ApiError(404, "not_found", f"No population job '{job_id}'.")
    components().decision_log.record_access(auditor.username, "api.population.job", {"job": job_id})
    summary = job_summary(row)
    summary["progress"] = round(row["chunks_done"] / row["chunks_total"], 4) if row["chunks_total"] else 0.0
    return jsonify(summary)
