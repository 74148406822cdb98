"""Every EHR is its own tenant, over real HTTP on SQLite and PostgreSQL.

A stored answer is replayed only to the caller (issuer and tenant) that asked the very same question;
feedback is taken only from the caller whose call issued the card; an override snoozes only that
caller's patient. Patient ids are the EHR's own: the same id at another EHR is another patient.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cds_service.cli import main
from hooks.synthetic import generate
from tests.cds_service.requests import TODAY, overridden, patient_view_of
from tests.conftest import scratch_postgres
from tests.support import LogReader, RunningService, SigningEhr, assert_cards_response, error_of

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"
FEEDBACK = PATIENT_VIEW + "/feedback"


@pytest.fixture(scope="module")
def second_ehr() -> SigningEhr:
    return SigningEhr("https://second-ehr.example.org")


@pytest.fixture
def first(
    service_factory: Callable[..., RunningService], ehr: SigningEhr, second_ehr: SigningEhr, database_url: str
) -> RunningService:
    """The service trusting two EHRs, the first of which serves two tenants; calls signed by the first."""
    return service_factory(
        database_url=database_url,
        trusted_issuers={
            ehr.issuer: {"jwks": ehr.jwks, "tenants": ["north", "south"]},
            second_ehr.issuer: {"jwks": second_ehr.jwks},
        },
    )


@pytest.fixture
def second(first: RunningService, second_ehr: SigningEhr) -> RunningService:
    """The same service, called by the second EHR."""
    return RunningService(first.base_url, first.app, second_ehr, first.client)


@pytest.fixture
def log(first: RunningService, read_log: Callable[[RunningService], LogReader]) -> LogReader:
    return read_log(first)


def new_patient(patient_id: str | None = None) -> list[dict[str, Any]]:
    return generate("radiculopathy-knee-pain", seed=uuid.uuid4().int % 10**9, today=TODAY, patient_id=patient_id)


def cards_of(running: RunningService, body: dict[str, Any], tenant: str = "north") -> list[dict[str, Any]]:
    claims = {"tenant": tenant} if running.ehr.issuer.startswith("https://ehr.") else {}
    return assert_cards_response(running.post(PATIENT_VIEW, body, **claims))


def resource_ids(resources: list[dict[str, Any]]) -> set[str]:
    return {f"{r['resourceType']}/{r['id']}" for r in resources}


def test_a_hook_instance_reused_for_another_patient_is_answered_afresh(first: RunningService, log: LogReader) -> None:
    one, other = new_patient(), new_patient()
    body = patient_view_of(one)
    reused = {**patient_view_of(other), "hookInstance": body["hookInstance"]}

    [card] = cards_of(first, body)
    [fresh] = cards_of(first, reused)

    assert fresh["uuid"] != card["uuid"]
    answer = str(fresh)
    assert not any(reference in answer for reference in resource_ids(one)), "the first patient's record leaked"
    assert f"Patient/{other[0]['id']}" in answer
    earlier, later = log.decisions(hook_instance=body["hookInstance"])
    assert (earlier["status_code"], later["status_code"]) == (200, 200)
    assert later["reuse_of"] == earlier["id"] and earlier["reuse_of"] is None
    assert later["patient_pseudonym"] != earlier["patient_pseudonym"]


def test_the_same_call_from_another_issuer_is_answered_afresh_and_logged(
    first: RunningService, second: RunningService, log: LogReader
) -> None:
    body = patient_view_of(new_patient())
    [card] = cards_of(first, body)
    [theirs] = cards_of(second, body)
    assert theirs["uuid"] != card["uuid"]
    earlier, later = log.decisions(hook_instance=body["hookInstance"])
    assert (earlier["issuer"], later["issuer"]) == (first.ehr.issuer, second.ehr.issuer)
    assert later["reuse_of"] == earlier["id"]


def test_the_same_call_from_another_tenant_is_answered_afresh(first: RunningService, log: LogReader) -> None:
    body = patient_view_of(new_patient())
    [north] = cards_of(first, body, tenant="north")
    [south] = cards_of(first, body, tenant="south")
    assert south["uuid"] != north["uuid"]
    earlier, later = log.decisions(hook_instance=body["hookInstance"])
    assert (earlier["tenant"], later["tenant"], later["reuse_of"]) == ("north", "south", earlier["id"])


def test_the_same_call_retried_by_the_same_caller_gets_the_first_answer(first: RunningService, log: LogReader) -> None:
    body = patient_view_of(new_patient())
    assert cards_of(first, body) == cards_of(first, body)
    [row] = log.decisions(hook_instance=body["hookInstance"])
    assert row["reuse_of"] is None


def test_feedback_on_another_issuers_card_is_refused_and_not_stored(
    first: RunningService, second: RunningService, log: LogReader
) -> None:
    [card] = cards_of(first, patient_view_of(new_patient()))
    response = second.post(FEEDBACK, {"feedback": [overridden(card, "already-evaluated")]})
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_card"
    assert log.feedback(card_uuid=card["uuid"]) == []


def test_feedback_on_another_tenants_card_is_refused(first: RunningService, log: LogReader) -> None:
    [card] = cards_of(first, patient_view_of(new_patient()), tenant="north")
    response = first.post(FEEDBACK, {"feedback": [overridden(card, "already-evaluated")]}, tenant="south")
    assert response.status_code == 404
    assert log.feedback(card_uuid=card["uuid"]) == []
    stored = first.post(FEEDBACK, {"feedback": [overridden(card, "already-evaluated")]}, tenant="north")
    assert stored.status_code == 200
    [row] = log.feedback(card_uuid=card["uuid"])
    assert (row["issuer"], row["tenant"]) == (first.ehr.issuer, "north")


def test_one_ehrs_override_does_not_snooze_another_ehrs_patient_with_the_same_id(
    first: RunningService, second: RunningService, log: LogReader
) -> None:
    shared_id = f"patient-{uuid.uuid4().hex[:8]}"
    at_first, at_second = new_patient(shared_id), new_patient(shared_id)
    [card] = cards_of(first, patient_view_of(at_first))
    assert first.post(FEEDBACK, {"feedback": [overridden(card, "already-evaluated")]}, tenant="north").status_code == 200

    assert cards_of(first, patient_view_of(at_first)) == []  # snoozed where the override was made
    assert len(cards_of(second, patient_view_of(at_second))) == 1  # not at the other EHR
    assert len(cards_of(first, patient_view_of(at_first), tenant="south")) == 1  # nor at the other tenant


@pytest.fixture(params=["sqlite", "postgresql"])
def alone(
    request: pytest.FixtureRequest, service_factory: Callable[..., RunningService], ehr: SigningEhr, tmp_path: Path
) -> Iterator[RunningService]:
    """The service on a database of its own, so the whole log is this test's to verify."""
    issuers = {ehr.issuer: {"jwks": ehr.jwks, "tenants": ["north", "south"]}}
    if request.param == "sqlite":
        yield service_factory(database_url=f"sqlite:///{tmp_path / 'alone.sqlite3'}", trusted_issuers=issuers)
        return
    with scratch_postgres("spine_cds_tenancy") as url:
        yield service_factory(database_url=url, trusted_issuers=issuers)


def test_a_re_pointed_issued_card_neither_snoozes_another_patient_nor_verifies(
    alone: RunningService, read_log: Callable[[RunningService], LogReader]
) -> None:
    """A database administrator re-points one patient's card to another patient's decision: feedback
    on the card must not reach the other patient, and `spine-cds audit verify` fails."""
    log = read_log(alone)
    one, other = new_patient(), new_patient()
    [card] = cards_of(alone, patient_view_of(one))
    cards_of(alone, patient_view_of(other))
    victim = log.decisions()[-1]
    with log.engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE issued_cards SET decision_id = {victim['id']} WHERE card_uuid = '{card['uuid']}'")

    response = alone.post(FEEDBACK, {"feedback": [overridden(card, "already-evaluated")]}, tenant="north")
    assert response.status_code == 404
    assert len(cards_of(alone, patient_view_of(other))) == 1  # the other patient is not snoozed

    settings = alone.app.extensions["spine_cds"].settings
    env = {"SPINE_CDS_DATABASE_URL": settings.effective_database_url, "SPINE_CDS_INSTANCE_PATH": str(settings.instance_path)}
    result = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert result.exit_code == 1, result.output
    assert "issued card" in result.output and "which did not show it" in result.output
