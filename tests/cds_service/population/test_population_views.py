"""GET /population/jobs/{id}: job status for auditors, never for EHR callers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import httpx

from cds_service.auditor.accounts import add_user
from hooks.model import load_model
from tests.support import CHEAP_PASSWORD_HASH, RunningService
from worker import population

PASSWORD = "a-long-auditor-password"


def test_job_status_for_an_auditor(service_factory: Callable[..., RunningService]) -> None:
    running = service_factory()
    engine = running.app.extensions["spine_cds"].engine
    add_user(engine, "auditor-1", PASSWORD, method=CHEAP_PASSWORD_HASH)
    job_id = population.create_job(engine, load_model(), "/exports/site-a", date(2026, 11, 24))
    population.register_chunks(engine, job_id, 4)
    rows = [{"job_id": job_id, "chunk": 0, "patient_id": "p1", "status": "scored", "worklist": True, "band": "likely"}]
    assert population.record_chunk(engine, job_id, 0, rows)

    auth = httpx.BasicAuth("auditor-1", PASSWORD)
    found = running.client.get(f"/population/jobs/{job_id}", auth=auth)
    assert found.status_code == 200
    body = found.json()
    assert (body["status"], body["chunks_total"], body["chunks_done"], body["patients_scored"]) == ("scoring", 4, 1, 1)
    assert body["progress"] == 0.25
    assert body["model_version"] == load_model().version
    listed = running.client.get("/population/jobs", auth=auth).json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]

    missing = running.client.get("/population/jobs/no-such-job", auth=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_job_status_refuses_anonymous_callers_and_ehr_tokens(service_factory: Callable[..., RunningService]) -> None:
    running = service_factory()
    assert running.client.get("/population/jobs/x").status_code == 401
    ehr = running.client.get("/population/jobs/x", headers=running.headers("/population/jobs/x"))
    assert ehr.status_code == 401
    assert running.client.get("/population/jobs/x", auth=httpx.BasicAuth("nobody", PASSWORD)).status_code == 401
