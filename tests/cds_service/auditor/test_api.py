"""The auditor JSON API over real HTTP: filters, sorting, pages, detail, statistics, authentication, access log, OpenAPI.

The log is written through the service's own signed hook and feedback calls (conftest.build_audit_log);
the API is called with an auditor's HTTP Basic credentials.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from cds_service.decision_log.tables import Feedback
from cds_service.decision_log.transparency import checkpoints, extend_and_sign
from tests.cds_service.audit_log import BEFORE_MIDDLE, FORMULA_USER, PATIENT_MASK, AuditLog
from tests.support import error_of

API = "/audit/api"
ALL = {"likely", "possible", "no-card", "child", "order", "invalid", "refused"}
NORTH = {"likely", "possible", "invalid", "refused"}
SOUTH = ALL - NORTH
PROTECTED = ["/decisions", "/decisions/1", "/stats", "/export.ndjson", "/export.csv"]


def swap(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [swap(v, old, new) for v in value]
    return new if value == old else value


def filter_cases(log: AuditLog) -> dict[str, tuple[dict[str, str], set[str]]]:
    likely_patient = log.calls["likely"].patient_id
    first_day, last_day = log.start.date(), log.end.date()
    return {
        "service": ({"service": "spine-knee-order-sign"}, {"order"}),
        "hook-order-sign": ({"hook": "order-sign"}, {"order"}),
        "hook-patient-view": ({"hook": "patient-view"}, ALL - {"order"}),
        "band-likely": ({"band": "likely"}, {"likely", "order"}),
        "band-possible": ({"band": "possible"}, {"possible"}),
        "outcome-no-card": ({"outcome": "no-card"}, {"no-card", "child"}),
        "outcome-412": ({"outcome": "prefetch_unavailable"}, {"refused"}),
        "outcome-400": ({"outcome": "invalid_request"}, {"invalid"}),
        "reason-likely": ({"reason": "spinal-origin-likely"}, {"likely", "order"}),
        "reason-not-eligible": ({"reason": "not-eligible"}, {"child"}),
        "reason-no-evidence": ({"reason": "no-spinal-evidence"}, {"no-card"}),
        "reason-failed": ({"reason": "prefetch_unavailable"}, {"refused"}),
        "user": ({"user": "Practitioner/dr-1"}, {"likely", "order", "refused"}),
        "user-role": ({"user": "PractitionerRole/nurse-7"}, {"possible"}),
        "user-formula": ({"user": FORMULA_USER}, {"no-card"}),
        "tenant-north": ({"tenant": log.north}, NORTH),
        "tenant-south": ({"tenant": log.south}, SOUTH),
        "patient": ({"patient": likely_patient}, {"likely", "refused"}),
        "patient-order": ({"patient": log.calls["order"].patient_id}, {"order"}),
        "patient-unknown": ({"patient": "no-such-patient"}, set()),
        "combined": ({"tenant": log.north, "outcome": "cards"}, {"likely", "possible"}),
        "from-instant": ({"from": log.middle.isoformat()}, ALL - BEFORE_MIDDLE),
        "to-instant": ({"to": log.middle.isoformat()}, BEFORE_MIDDLE),
        "from-instant-with-offset": (
            {"from": log.middle.astimezone(timezone(timedelta(hours=2))).isoformat()},
            ALL - BEFORE_MIDDLE,
        ),
        "to-instant-zulu": ({"to": log.middle.isoformat().replace("+00:00", "Z")}, BEFORE_MIDDLE),
        "window": ({"from": log.start.isoformat(), "to": log.end.isoformat()}, ALL),
        "days": ({"from": first_day.isoformat(), "to": last_day.isoformat()}, ALL),
        "to-yesterday": ({"to": (first_day - timedelta(days=1)).isoformat()}, set()),
        "from-tomorrow": ({"from": (last_day + timedelta(days=1)).isoformat()}, set()),
    }


FILTER_CASE_NAMES = [
    "service",
    "hook-order-sign",
    "hook-patient-view",
    "band-likely",
    "band-possible",
    "outcome-no-card",
    "outcome-412",
    "outcome-400",
    "reason-likely",
    "reason-not-eligible",
    "reason-no-evidence",
    "reason-failed",
    "user",
    "user-role",
    "user-formula",
    "tenant-north",
    "tenant-south",
    "patient",
    "patient-order",
    "patient-unknown",
    "combined",
    "from-instant",
    "to-instant",
    "from-instant-with-offset",
    "to-instant-zulu",
    "window",
    "days",
    "to-yesterday",
    "from-tomorrow",
]


def scopes(log: AuditLog, shared: bool) -> list[dict[str, str]]:
    """On a database shared with other tests, each question is asked once per tenant of this log."""
    return [{"tenant": log.north}, {"tenant": log.south}] if shared else [{}]


def search(log: AuditLog, params: dict[str, Any], shared: bool = False) -> set[str]:
    """The names of the decisions a search finds (every page), checking that nothing else is found."""
    found: set[str] = set()
    for scope in scopes(log, shared):
        response = log.get(f"{API}/decisions", {**scope, **params, "per_page": 500})
        assert response.status_code == 200, response.text
        log.assert_no_patient_id(response.text)
        body = response.json()
        ids = [item["id"] for item in body["items"]]
        assert body["total"] == len(ids) and "next" not in body
        assert len(log.names(ids)) == len(ids), "a decision from outside this log was found"
        found |= log.names(ids)
    return found


def check_detail(log: AuditLog) -> None:
    """Every decision in full: cards as the EHR received them (the Patient reference masked), findings, model, feedback."""
    model = log.running.client.get("/model.json").json()
    pseudonyms: dict[str, str | None] = {}
    for call in log.calls.values():
        response = log.get(f"{API}/decisions/{call.id}")
        assert response.status_code == 200, response.text
        log.assert_no_patient_id(response.text)
        body = response.json()
        pseudonyms[call.name] = body["patient_pseudonym"]
        assert body["id"] == call.id
        assert (body["service_id"], body["hook"], body["hook_instance"]) == (call.service, call.hook, call.hook_instance)
        assert (body["tenant"], body["user_id"], body["issuer"]) == (call.tenant, call.user, log.running.ehr.issuer)
        assert (body["status_code"], body["outcome"], body["band"]) == (call.status, call.outcome, call.band)
        assert body["cards"] == swap(call.cards, f"Patient/{call.patient_id}", PATIENT_MASK)
        assert body["card_uuids"] == [c["uuid"] for c in call.cards]
        if call.status == 200:
            assert (body["model_id"], body["model_version"], body["model_hash"]) == (model["id"], model["version"], model["hash"])
            assert body["assessment"]["model"] == {"id": model["id"], "version": model["version"], "hash": model["hash"]}
        else:
            assert body["assessment"] is None and body["model_version"] is None
    likely = log.get(f"{API}/decisions/{log.calls['likely'].id}").json()
    card = log.calls["likely"].cards[0]
    suggestion = card["suggestions"][0]
    stored_suggestion = likely["cards"][0]["suggestions"][0]
    assert suggestion["actions"][0]["resource"]["subject"] == {"reference": f"Patient/{log.calls['likely'].patient_id}"}
    assert stored_suggestion["actions"][0]["resource"]["subject"] == {"reference": PATIENT_MASK}
    findings = {f["signal"]: f for f in likely["assessment"]["findings"]}
    assert set(findings) == {"lumbar_radiculopathy", "low_back_pain", "l3_l4_picture", "thigh_with_back_problem"}
    assert all(r.startswith("Condition/") for f in findings.values() for r in f["references"])
    assert [(f["outcome"], f["card_uuid"], f["accepted_suggestions"]) for f in likely["feedback"]] == [
        ("accepted", card["uuid"], [suggestion["uuid"]])
    ]
    order = log.get(f"{API}/decisions/{log.calls['order'].id}").json()
    assert [(f["outcome"], f["override_code"], f["override_comment"]) for f in order["feedback"]] == [
        ("overridden", "knee-cause-confirmed", "Meniscal tear on exam")
    ]
    assert all(not log.get(f"{API}/decisions/{log.calls[n].id}").json()["feedback"] for n in ALL - {"likely", "order"})
    # the same patient has the same pseudonym; the 400 was refused before the patient was read
    assert pseudonyms["likely"] == pseudonyms["refused"] and re.fullmatch(r"[0-9a-f]{64}", str(pseudonyms["likely"]))
    assert pseudonyms["invalid"] is None
    assert len({pseudonyms[n] for n in ALL - {"refused", "invalid"}}) == len(ALL) - 2


def expected_stats(log: AuditLog, names: set[str]) -> dict[str, Any]:
    calls = [log.calls[n] for n in names]
    cards = sum(len(c.cards) for c in calls)
    accepted = 1 if "likely" in names else 0
    overridden = 1 if "order" in names else 0
    bands: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    for call in calls:
        bands[call.band or "not assessed"] = bands.get(call.band or "not assessed", 0) + 1
        outcomes[call.outcome] = outcomes.get(call.outcome, 0) + 1
    return {
        "decisions": len(calls),
        "cards_shown": cards,
        "accepted": accepted,
        "overridden": overridden,
        "acceptance_rate": round(accepted / cards, 4) if cards else None,
        "override_rate": round(overridden / cards, 4) if cards else None,
        "override_reasons": {"knee-cause-confirmed": 1} if overridden else {},
        "bands": bands,
        "outcomes": outcomes,
    }


def check_stats(log: AuditLog, params: dict[str, str], names: set[str]) -> dict[str, Any]:
    response = log.get(f"{API}/stats", params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert {k: body[k] for k in expected_stats(log, names)} == expected_stats(log, names)
    assert sum(day["decisions"] for day in body["per_day"]) == len(names)
    assert sum(day["cards"] for day in body["per_day"]) == body["cards_shown"]
    assert sum(day["accepted"] for day in body["per_day"]) == body["accepted"]
    assert sum(day["overridden"] for day in body["per_day"]) == body["overridden"]
    return body


# -- filters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", FILTER_CASE_NAMES)
def test_each_filter_narrows_the_search(audit_log: AuditLog, case: str) -> None:
    params, expected = filter_cases(audit_log)[case]
    assert search(audit_log, params) == expected


def test_the_filter_cases_are_all_run(audit_log: AuditLog) -> None:
    assert set(filter_cases(audit_log)) == set(FILTER_CASE_NAMES)


def test_without_filters_every_decision_is_found(audit_log: AuditLog) -> None:
    assert search(audit_log, {}) == ALL


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"colour": "red"}, "invalid_filter"),
        ({"patient_id": "x"}, "invalid_filter"),
        ({"from": "yesterday"}, "invalid_filter"),
        ({"to": "2026-13-45"}, "invalid_filter"),
        ({"sort": "password_hash"}, "invalid_sort"),
        ({"page": "0"}, "invalid_page"),
        ({"page": "two"}, "invalid_page"),
        ({"per_page": "501"}, "invalid_page"),
    ],
)
def test_bad_query_values_are_400_json_errors(audit_log: AuditLog, params: dict[str, str], code: str) -> None:
    response = audit_log.get(f"{API}/decisions", params)
    assert response.status_code == 400
    assert error_of(response)["code"] == code


@pytest.mark.parametrize("path", ["/stats", "/export.ndjson", "/export.csv"])
def test_the_other_endpoints_reject_bad_filters_too(audit_log: AuditLog, path: str) -> None:
    for params in ({"colour": "red"}, {"from": "not-a-date"}):
        response = audit_log.get(API + path, params)
        assert response.status_code == 400
        assert error_of(response)["code"] == "invalid_filter"


# -- sorting and pages -----------------------------------------------------------------------------


def items(log: AuditLog, **params: Any) -> list[dict[str, Any]]:
    response = log.get(f"{API}/decisions", {"per_page": 500, **params})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["items"]
    return found


def test_the_default_order_is_newest_first(audit_log: AuditLog) -> None:
    ids = [i["id"] for i in items(audit_log)]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(ALL)
    assert ids == [i["id"] for i in items(audit_log, sort="-created_at")]


@pytest.mark.parametrize("column", ["created_at", "latency_ms", "outcome", "service_id", "id"])
def test_sorting_ascending_and_descending(audit_log: AuditLog, column: str) -> None:
    ascending = [i[column] for i in items(audit_log, sort=column)]
    descending = [i[column] for i in items(audit_log, sort=f"-{column}")]
    assert ascending == sorted(ascending) and len(ascending) == len(ALL)
    assert descending == sorted(descending, reverse=True)


def test_sorting_by_band_keeps_every_decision(audit_log: AuditLog) -> None:
    bands = [i["band"] for i in items(audit_log, sort="band")]
    assert sorted(b for b in bands if b is not None) == [b for b in bands if b is not None]
    assert len(bands) == len(ALL)


def test_pages_follow_next_links_to_the_end(audit_log: AuditLog) -> None:
    response = audit_log.get(f"{API}/decisions", {"per_page": 3, "sort": "created_at"})
    seen: list[int] = []
    sizes: list[int] = []
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["total"], body["per_page"]) == (len(ALL), 3)
        seen += [i["id"] for i in body["items"]]
        sizes.append(len(body["items"]))
        if body["page"] > 1:
            assert parse_qs(urlsplit(body["prev"]).query)["page"] == [str(body["page"] - 1)]
            assert f'<{body["prev"]}>; rel="prev"' in response.headers["Link"]
        else:
            assert "prev" not in body
        if "next" not in body:
            break
        assert f'<{body["next"]}>; rel="next"' in response.headers["Link"]
        query = parse_qs(urlsplit(body["next"]).query)
        assert query == {"per_page": ["3"], "sort": ["created_at"], "page": [str(body["page"] + 1)]}
        assert body["next"].startswith(audit_log.running.base_url + f"{API}/decisions?")
        response = audit_log.get(body["next"])
    assert sizes == [3, 3, 1]
    assert seen == sorted(seen) and len(set(seen)) == len(ALL)
    assert audit_log.names(seen) == ALL


def test_next_links_keep_the_filters(audit_log: AuditLog) -> None:
    body = audit_log.get(f"{API}/decisions", {"tenant": audit_log.north, "per_page": 1}).json()
    pages = 1
    found = {i["id"] for i in body["items"]}
    while "next" in body:
        assert parse_qs(urlsplit(body["next"]).query)["tenant"] == [audit_log.north]
        body = audit_log.get(body["next"]).json()
        found |= {i["id"] for i in body["items"]}
        pages += 1
    assert pages == len(NORTH) and audit_log.names(sorted(found)) == NORTH


def test_a_page_past_the_end_is_empty_and_links_back(audit_log: AuditLog) -> None:
    body = audit_log.get(f"{API}/decisions", {"per_page": 3, "page": 9}).json()
    assert (body["items"], body["total"], body["page"]) == ([], len(ALL), 9)
    assert "next" not in body
    assert parse_qs(urlsplit(body["prev"]).query)["page"] == ["3"]


def test_an_empty_search_has_no_links(audit_log: AuditLog) -> None:
    response = audit_log.get(f"{API}/decisions", {"tenant": "nobody"})
    assert response.json() == {"items": [], "total": 0, "page": 1, "per_page": 50}
    assert "Link" not in response.headers


def test_summaries_carry_the_summary_columns(audit_log: AuditLog) -> None:
    item = next(i for i in items(audit_log) if i["id"] == audit_log.calls["possible"].id)
    call = audit_log.calls["possible"]
    assert item["hook_instance"] == call.hook_instance
    assert (item["service_id"], item["tenant"], item["user_id"], item["band"]) == (
        call.service,
        call.tenant,
        call.user,
        "possible",
    )
    assert re.fullmatch(r"[0-9a-f]{64}", item["patient_pseudonym"])
    assert "cards" not in item and "assessment" not in item


# -- one decision ----------------------------------------------------------------------------------


def test_a_decision_in_full(audit_log: AuditLog) -> None:
    check_detail(audit_log)


def test_an_unknown_decision_is_404(audit_log: AuditLog) -> None:
    response = audit_log.get(f"{API}/decisions/987654")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    not_a_number = audit_log.get(f"{API}/decisions/abc")
    assert not_a_number.status_code == 404
    assert error_of(not_a_number)["code"] == "not_found"


# -- statistics ------------------------------------------------------------------------------------


def test_stats_equal_hand_counted_figures(audit_log: AuditLog) -> None:
    body = check_stats(audit_log, {}, ALL)
    assert body["decisions"] == 7 and body["cards_shown"] == 3
    assert (body["accepted"], body["overridden"]) == (1, 1)
    assert (body["acceptance_rate"], body["override_rate"]) == (0.3333, 0.3333)
    assert body["bands"] == {"likely": 2, "possible": 1, "unlikely": 1, "not assessed": 3}
    assert body["outcomes"] == {"cards": 3, "no-card": 2, "invalid_request": 1, "prefetch_unavailable": 1}
    latencies = sorted(i["latency_ms"] for i in items(audit_log))
    assert body["latency_ms"]["p50"] == round(latencies[3], 2)  # the 4th of 7 (nearest rank)
    assert body["latency_ms"]["p99"] == round(latencies[-1], 2)


def test_stats_take_the_same_filters(audit_log: AuditLog) -> None:
    check_stats(audit_log, {"tenant": audit_log.north}, NORTH)
    check_stats(audit_log, {"tenant": audit_log.south}, SOUTH)
    check_stats(audit_log, {"patient": audit_log.calls["likely"].patient_id}, {"likely", "refused"})
    check_stats(audit_log, {"service": "spine-knee-order-sign"}, {"order"})
    empty = check_stats(audit_log, {"tenant": "nobody"}, set())
    assert empty["latency_ms"] == {"p50": None, "p90": None, "p99": None} and empty["per_day"] == []


# -- authentication --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PROTECTED)
def test_no_credentials_is_401_with_a_basic_challenge(audit_log: AuditLog, path: str) -> None:
    before = len(audit_log.access_log())
    response = audit_log.running.client.get(API + path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert error_of(response)["code"] == "login_required"
    assert len(audit_log.access_log()) == before


@pytest.mark.parametrize("path", PROTECTED)
def test_wrong_credentials_are_401(audit_log: AuditLog, path: str) -> None:
    for credentials in ((audit_log.username, "wrong password!"), ("nobody-at-all", audit_log.password), (audit_log.username, "")):
        response = audit_log.get(API + path, auth=credentials)
        assert response.status_code == 401, credentials
        assert response.headers["WWW-Authenticate"].startswith("Basic ")


@pytest.mark.parametrize("path", PROTECTED)
def test_an_ehr_jwt_opens_nothing(audit_log: AuditLog, path: str) -> None:
    """A Bearer token the hook endpoints would accept, signed for exactly this URL, is not an auditor."""
    response = audit_log.running.get(API + path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert error_of(response)["code"] == "login_required"


def test_an_auditor_session_cookie_is_accepted(audit_log: AuditLog) -> None:
    app = audit_log.running.app
    cookie = app.session_interface.get_signing_serializer(app).dumps({"auditor": audit_log.username, "role": "auditor"})
    response = audit_log.running.client.get(f"{API}/stats", headers={"Cookie": f"session={cookie}"})
    assert response.status_code == 200, response.text
    assert audit_log.access_log()[-1]["username"] == audit_log.username


def test_a_forged_session_cookie_is_not(audit_log: AuditLog) -> None:
    response = audit_log.running.client.get(f"{API}/stats", headers={"Cookie": "session=eyJhdWRpdG9yIjoiYWRtaW4ifQ.forged.sig"})
    assert response.status_code == 401


def test_answers_are_not_cached(audit_log: AuditLog) -> None:
    assert audit_log.get(f"{API}/decisions").headers["Cache-Control"] == "no-store"
    assert audit_log.get(f"{API}/export.csv").headers["Cache-Control"] == "no-store"


# -- the access log --------------------------------------------------------------------------------


def test_every_call_is_written_to_the_access_log(audit_log: AuditLog) -> None:
    patient = audit_log.calls["likely"].patient_id
    before = len(audit_log.access_log())
    pseudonym = audit_log.running.app.extensions["spine_cds"].decision_log.pseudonym(patient)
    decision_id = audit_log.calls["order"].id

    calls = [
        (f"{API}/decisions", {"patient": patient, "sort": "latency_ms", "page": "2", "per_page": "1"}),
        (f"{API}/decisions/{decision_id}", None),
        (f"{API}/decisions/987654", None),
        (f"{API}/stats", {"tenant": audit_log.north, "from": "2026-01-01"}),
        (f"{API}/export.ndjson", {"patient": patient}),
        (f"{API}/export.csv", {"band": "likely"}),
    ]
    for path, params in calls:
        assert audit_log.get(path, params).status_code in (200, 404)

    rows = audit_log.access_log()[before:]
    assert [(r["username"], r["action"]) for r in rows] == [
        (audit_log.username, "api.search"),
        (audit_log.username, "api.view"),
        (audit_log.username, "api.view"),
        (audit_log.username, "api.stats"),
        (audit_log.username, "api.export.ndjson"),
        (audit_log.username, "api.export.csv"),
    ]
    assert [r["details"] for r in rows] == [
        {"patient_pseudonym": pseudonym, "sort": "latency_ms", "page": 2, "per_page": 1},
        {"id": decision_id},
        {"id": 987654},
        {"tenant": audit_log.north, "start": "2026-01-01T00:00:00+00:00"},
        {"patient_pseudonym": pseudonym},
        {"band": "likely"},
    ]
    assert all(r["created_at"] is not None for r in rows)


def test_a_refused_query_is_not_logged_as_a_search(audit_log: AuditLog) -> None:
    before = len(audit_log.access_log())
    assert audit_log.get(f"{API}/decisions", {"colour": "red"}).status_code == 400
    assert len(audit_log.access_log()) == before


def test_no_raw_patient_id_in_any_answer_or_the_access_log(audit_log: AuditLog) -> None:
    texts: list[str] = []
    for call in audit_log.calls.values():
        for path in ("/decisions", "/stats", "/export.ndjson", "/export.csv"):
            response = audit_log.get(API + path, {"patient": call.patient_id})
            assert response.status_code == 200, response.text
            texts.append(response.text)
        texts.append(audit_log.get(f"{API}/decisions/{call.id}").text)
    for text in texts:
        audit_log.assert_no_patient_id(text)
    access = json.dumps(audit_log.access_log(), default=str)
    audit_log.assert_no_patient_id(access)
    assert '"patient"' not in access


# -- the OpenAPI description -----------------------------------------------------------------------


def openapi(log: AuditLog) -> dict[str, Any]:
    response = log.running.client.get(f"{API}/openapi.json")  # no credentials
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def api_routes(log: AuditLog) -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for rule in log.running.app.url_map.iter_rules():
        if rule.rule.startswith(API + "/"):
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
            routes.setdefault(path, set()).update(m.lower() for m in rule.methods or () if m not in ("HEAD", "OPTIONS"))
    return routes


def resolve(document: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in item:
        return item
    node: Any = document
    for part in item["$ref"].removeprefix("#/").split("/"):
        node = node[part]
    return resolve(document, node)


def test_the_openapi_document_is_valid_openapi_3_1(audit_log: AuditLog) -> None:
    document = openapi(audit_log)
    assert document["openapi"].startswith("3.1")
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


def test_the_openapi_document_describes_every_route(audit_log: AuditLog) -> None:
    document = openapi(audit_log)
    routes = api_routes(audit_log)
    assert len(routes) == 14
    assert {path: set(operations) for path, operations in document["paths"].items()} == routes


def test_the_openapi_document_has_the_error_schema(audit_log: AuditLog) -> None:
    document = openapi(audit_log)
    error = document["components"]["schemas"]["Error"]
    assert set(error["properties"]["error"]["properties"]) == {"code", "message", "details"}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, path
            if operation.get("security") != []:
                assert "401" in operation["responses"], path


def test_every_documented_parameter_is_accepted(audit_log: AuditLog) -> None:
    document = openapi(audit_log)
    parts = audit_log.running.app.extensions["spine_cds"]
    signed = extend_and_sign(parts.engine, parts.runtime.checkpoint_signer)  # so the proofs can be given
    size = signed.size if signed else checkpoints(parts.engine)[0]["size"]
    required = {"/audit/api/consistency": {"from": size}}
    likely = audit_log.calls["likely"].id
    with parts.engine.connect() as connection:  # the likely card was accepted: its feedback item
        feedback_id = connection.execute(select(Feedback.id).where(Feedback.decision_id == likely)).scalar_one()
    checked = 0
    for path, operations in document["paths"].items():
        for operation in operations.values():
            parameters = [resolve(document, p) for p in operation.get("parameters", [])]
            url = path.replace("{decision_id}", str(likely)).replace("{feedback_id}", str(feedback_id))
            for parameter in parameters:
                if parameter["in"] == "path":
                    continue
                example = size if url in required and parameter["name"] == "from" else parameter["example"]
                response = audit_log.get(url, {**required.get(url, {}), parameter["name"]: example})
                assert response.status_code == 200, (path, parameter["name"], response.text)
                checked += 1
            assert audit_log.get(url, required.get(url)).status_code == 200, path
    # the search takes 10 filters and 3 paging parameters, stats and exports 10 filters; the access log's search
    # 6 filters and 2 paging parameters, its export 6 filters; governance and its CSV 10 filters each; the consistency proof its `from`
    assert checked == 13 + 3 * 10 + 8 + 6 + 2 * 10 + 1


# -- on each database ------------------------------------------------------------------------------


def test_the_api_answers_alike_on_each_database(audit_log_factory: Callable[..., AuditLog], database_url: str) -> None:
    """PostgreSQL keeps one database for the test session: every question is scoped to this log's tenants."""
    log = audit_log_factory(database_url=database_url)
    for params, expected in filter_cases(log).values():
        assert search(log, params, shared=True) == expected, params
    check_detail(log)
    check_stats(log, {"tenant": log.north}, NORTH)
    check_stats(log, {"tenant": log.south}, SOUTH)
    check_stats(log, {"tenant": log.south, "band": "likely"}, {"order"})
    ascending = [i["id"] for i in items(log, tenant=log.north, sort="created_at")]
    assert ascending == sorted(ascending) and log.names(ascending) == NORTH
