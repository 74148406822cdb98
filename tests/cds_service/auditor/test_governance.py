"""Alert governance over a log of known calls and feedback: the API, the CSV and the page, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from tests.cds_service.audit_log import AuditLog

API = "/audit/api/governance"


def groups(log: AuditLog, **params: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    response = log.get(API, params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["warning_share"] == 0.25
    return {(g["tenant"], g["hook"], g["model_version"]): g for g in body["groups"]}


def test_the_figures_match_the_calls_and_feedback_logged(audit_log_factory: Callable[..., AuditLog], database_url: str) -> None:
    log = audit_log_factory(database_url=database_url)
    version = log.running.app.extensions["spine_cds"].model.version
    north, south = groups(log, tenant=log.north), groups(log, tenant=log.south)
    view = north[(log.north, "patient-view", version)]  # likely (accepted) and possible: both with cards
    assert {k: view[k] for k in ("calls", "eligible", "cards", "cards_per_100_eligible", "accepted", "overridden", "snoozed")} == {
        "calls": 2, "eligible": 2, "cards": 2, "cards_per_100_eligible": 100.0, "accepted": 1, "overridden": 0, "snoozed": 0,
    }  # fmt: skip
    assert view["warning"] is True
    assert (view["accepted_per_100_cards"], view["overridden_per_100_cards"]) == (50.0, 0.0)  # one of the two accepted
    failed = north[(log.north, "patient-view", "")]  # the 400 and the 412: no model applied, not eligible
    assert (failed["calls"], failed["eligible"], failed["cards"], failed["cards_per_100_eligible"]) == (2, 0, 0, None)
    quiet = south[(log.south, "patient-view", version)]  # knee OA only (assessed, no card) and a child (not assessed)
    assert (quiet["calls"], quiet["eligible"], quiet["cards"], quiet["cards_per_100_eligible"], quiet["warning"]) == (2, 1, 0, 0.0, False)
    order = south[(log.south, "order-sign", version)]
    assert (order["calls"], order["eligible"], order["cards"], order["overridden"]) == (1, 1, 1, 1)
    assert order["overridden_by_reason"] == {"knee-cause-confirmed": 1}
    assert (order["accepted_per_100_cards"], order["overridden_per_100_cards"]) == (0.0, 100.0)
    assert (quiet["accepted_per_100_cards"], failed["overridden_per_100_cards"]) == (None, None)  # no cards, no rate
    assert order["overridden_by_category"] == {"cds-not-applicable": 1}
    assert [week["cards"] for week in order["trend"]] == [1]

    rows = list(csv.DictReader(io.StringIO(log.get(f"{API}.csv", {"tenant": log.south}).text)))
    by_hook = {(r["hook"], r["model_version"]): r for r in rows}
    assert by_hook[("order-sign", version)]["overridden_by_category"] == "cds-not-applicable=1"
    assert by_hook[("patient-view", version)]["cards_per_100_eligible"] == "0.0"
    assert by_hook[("order-sign", version)]["overridden_per_100_cards"] == "100.0"
    assert any(e["action"] == "api.governance" for e in log.access_log())


def test_the_warning_share_is_a_setting(audit_log_factory: Callable[..., AuditLog]) -> None:
    log = audit_log_factory(governance_warning_share=1.0)
    response = log.get(API, {"tenant": log.north})
    assert response.json()["warning_share"] == 1.0
    assert not any(g["warning"] for g in response.json()["groups"])  # 100 per 100 is not above all of them


def test_the_governance_page_shows_the_groups_and_flags_frequent_firing(audit_log: AuditLog) -> None:
    page = audit_log.get("/audit/governance", {"tenant": audit_log.south})
    assert page.status_code == 200
    assert page.text.count('class="governance-row') == 2  # the south tenant's two groups
    assert "fires often" in page.text and "<code>cds-not-applicable</code>" in page.text
    assert "100.0 per 100 cards" in page.text  # the order-sign card's one override
    assert 'id="governance-csv"' in page.text
    audit_log.assert_no_patient_id(page.text)
    assert audit_log.get("/audit/governance", {"from": "not a day"}).status_code == 400
