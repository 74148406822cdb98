"""The service's other HTTP surface: CORS, health and readiness, and the model's documentation pages."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.cds_service.requests import patient_view
from tests.conftest import redis_client_or_skip
from tests.support import RunningService, assert_cards_response

PREFLIGHT = {
    "Origin": "https://ehr.example.org",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def service(module_service: RunningService) -> RunningService:
    return module_service


def _allowed(header: str) -> set[str]:
    return {h.strip().lower() for h in header.split(",")}


@pytest.mark.parametrize(
    "path",
    [
        "/cds-services",
        "/cds-services/spine-knee-patient-view",
        "/cds-services/spine-knee-order-sign",
        "/cds-services/spine-knee-patient-view/feedback",
    ],
)
def test_cors_preflight_needs_no_authentication(service: RunningService, path: str) -> None:
    """req 208: browser-based clients get CORS support: a preflight without credentials answers 204 and
    allows the Authorization and Content-Type headers."""
    response = service.client.options(path, headers=PREFLIGHT)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert {"authorization", "content-type"} <= _allowed(response.headers["access-control-allow-headers"])
    assert {"get", "post", "options"} <= _allowed(response.headers["access-control-allow-methods"])
    assert response.content == b""


def test_cors_headers_are_on_real_answers_and_errors(service: RunningService) -> None:
    """req 208"""
    ok = service.client.get("/cds-services", headers={**service.headers("/cds-services"), "Origin": "https://ehr.example.org"})
    refused = service.client.get("/cds-services", headers={"Origin": "https://ehr.example.org"})
    assert (ok.status_code, refused.status_code) == (200, 401)
    for response in (ok, refused):
        assert response.headers["access-control-allow-origin"] == "*"


def test_cors_with_an_origin_allow_list(service_factory: Callable[..., RunningService]) -> None:
    """req 208: with configured origins, only those are echoed back (and the answer varies by Origin)."""
    running = service_factory(cors_origins=["https://ehr.example.org"])
    allowed = running.client.options("/cds-services", headers=PREFLIGHT)
    other = running.client.options("/cds-services", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert allowed.status_code == other.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "https://ehr.example.org"
    assert "Origin" in allowed.headers["vary"]
    assert "access-control-allow-origin" not in other.headers


def test_healthz(service: RunningService) -> None:
    response = service.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_checks_the_database(service: RunningService) -> None:
    response = service.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok"}}


def test_readyz_checks_redis_when_configured(service_factory: Callable[..., RunningService]) -> None:
    redis_client_or_skip(REDIS_URL).close()
    running = service_factory(redis_url=REDIS_URL)
    response = running.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}
    # and a hook call works with the replay store in Redis
    assert len(assert_cards_response(running.post("/cds-services/spine-knee-patient-view", patient_view()))) == 1


def test_readyz_says_degraded_when_redis_is_down_and_calls_still_get_cards(
    service_factory: Callable[..., RunningService],
) -> None:
    """Redis holds only the jti memory and login limits: without it the service answers (the jti memory falls
    back to the database), so it stays ready, marked degraded."""
    running = service_factory(redis_url="redis://127.0.0.1:1/0")
    response = running.client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("unavailable")
    path = "/cds-services/spine-knee-patient-view"
    headers = running.headers(path)
    assert len(assert_cards_response(running.client.post(path, json=patient_view(), headers=headers))) == 1
    # the fallback remembers the jti: the same token again is a replay
    assert running.client.post(path, json=patient_view(), headers=headers).status_code == 401


def test_readyz_is_503_when_the_database_is_down(service_factory: Callable[..., RunningService]) -> None:
    running = service_factory(database_url="postgresql://postgres@127.0.0.1:1/none", auto_migrate=False)
    response = running.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("unavailable")


def test_model_page_is_html_and_cards_point_to_it(service: RunningService) -> None:
    """req 107, req 139: the card's source.url and link url are absolute URLs, to the model's page."""
    identity = service.client.get("/model.json").json()
    response = service.client.get("/model")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<!doctype html>")
    assert identity["id"] in response.text and identity["version"] in response.text
    assert identity["hash"] in response.text

    card = assert_cards_response(service.post("/cds-services/spine-knee-patient-view", patient_view()))[0]
    assert card["source"]["url"] == f"{service.base_url}/model"
    assert [link["url"] for link in card["links"]] == [f"{service.base_url}/model"]


def test_cards_use_the_configured_public_base_url(service_factory: Callable[..., RunningService]) -> None:
    """req 107: behind a proxy the configured public URL, not the internal one, is what cards link to."""
    running = service_factory(public_base_url="https://cds.example.org/spine/")
    path = "/cds-services/spine-knee-patient-view"
    # the token's audience is the public URL of the endpoint
    token = running.ehr.token("https://cds.example.org/spine" + path)
    response = running.client.post(path, json=patient_view(), headers={"Authorization": f"Bearer {token}"})
    card = assert_cards_response(response)[0]
    assert card["source"]["url"] == "https://cds.example.org/spine/model"


def test_model_json_identifies_the_model(service: RunningService) -> None:
    response = service.client.get("/model.json")
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body["id"], str) and body["id"]
    assert isinstance(body["version"], str) and body["version"]
    assert body["hash"].startswith("sha256:") and len(body["hash"]) == len("sha256:") + 64
    assert isinstance(body["title"], str) and body["title"]
    card = assert_cards_response(service.post("/cds-services/spine-knee-patient-view", patient_view()))[0]
    assert f"model {body['version']}." in card["detail"]


def test_model_json_carries_every_hti1_source_attribute(service: RunningService) -> None:
    """ONC HTI-1 (170.315(b)(11)): developer, funding, citations, release and revision dates, and each
    demographic and health data element with whether the model uses it, as the HTML page shows them."""
    body = service.client.get("/model.json").json()
    for key in ("developer", "funding", "released", "revised", "intended_use", "intended_users", "intended_population"):
        assert isinstance(body[key], str) and body[key], key
    assert body["citations"] and all(isinstance(text, str) and text for text in body["citations"].values())
    elements = body["data_elements"]
    assert set(elements) == {
        "date_of_birth",
        "race",
        "ethnicity",
        "language",
        "sexual_orientation",
        "gender_identity",
        "sex",
        "social_determinants_of_health",
        "health_status_assessments",
    }
    assert {k for k, v in elements.items() if v["used"]} == {"date_of_birth", "health_status_assessments"}
    assert body["changelog"][0]["version"] == body["version"]
    page = service.client.get("/model").text
    for element in ("Date of birth", "Race", "Ethnicity", "Sexual orientation", "Gender identity", "Social determinants"):
        assert element in page


def test_health_and_documentation_need_no_authentication(service: RunningService) -> None:
    for path in ("/healthz", "/readyz", "/model.json"):
        assert service.client.get(path).status_code == 200, path
