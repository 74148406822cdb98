"""The auditor pages over real HTTP: login and CSRF, no entry for EHR tokens, charts, search, detail, access log."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select, text

from cds_service.auditor import charts
from cds_service.auditor.accounts import add_user
from cds_service.auditor.pages import render_markdown
from cds_service.decision_log.tables import Decision
from hooks.synthetic import generate
from tests.cds_service.audit_log import AUDITOR_PASSWORD, AuditLog
from tests.cds_service.requests import TODAY, patient_view_of
from tests.support import CHEAP_PASSWORD_HASH, RunningService, assert_cards_response

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
ROW_LINK = re.compile(r'<a class="decision-link" href="/audit/decisions/(\d+)">')
SVG = re.compile(r"<svg [^>]*>", re.S)
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html
    return unescape(found.group(1))


def log_in(client: httpx.Client, username: str, password: str, next: str | None = None) -> httpx.Response:
    """Fill in the login form as a browser would: fetch it (session and CSRF token), then post it."""
    form = client.get("/audit/login", params={"next": next} if next is not None else None)
    assert form.status_code == 200, form.text
    data = {"csrf_token": csrf_of(form.text), "username": username, "password": password}
    if next is not None:
        data["next"] = next
    return client.post("/audit/login", data=data)


def location(response: httpx.Response) -> str:
    """The redirect target as a local path with its query (a full URL to this site is shortened)."""
    assert response.status_code == 302, (response.status_code, response.text)
    parts = urlsplit(response.headers["location"])
    return parts.path + (f"?{parts.query}" if parts.query else "")


def row_ids(html: str) -> list[int]:
    return [int(i) for i in ROW_LINK.findall(html)]


def svg_charts(html: str) -> list[str]:
    return [tag for tag in SVG.findall(html) if 'role="img"' in tag]


def aria_label(html: str, title: str) -> str:
    for tag in svg_charts(html):
        label = re.search(r'aria-label="([^"]*)"', tag)
        if label and unescape(label.group(1)).startswith(title + ":"):
            return unescape(label.group(1))
    raise AssertionError(f"no chart titled {title!r}")


@pytest.fixture
def browser(audit_log: AuditLog) -> Iterator[httpx.Client]:
    """A cookie-keeping client that does not follow redirects, not logged in."""
    with httpx.Client(base_url=audit_log.running.base_url, timeout=10, follow_redirects=False) as client:
        yield client


@pytest.fixture
def auditor(browser: httpx.Client, audit_log: AuditLog) -> httpx.Client:
    """The same client, logged in as the log's auditor."""
    assert location(log_in(browser, audit_log.username, audit_log.password)) == "/audit/"
    return browser


def new_access(audit_log: AuditLog, before: int) -> list[dict[str, Any]]:
    return audit_log.access_log()[before:]


# -- logging in and out -----------------------------------------------------------------------------


def test_login_with_the_form_opens_the_dashboard(browser: httpx.Client, audit_log: AuditLog) -> None:
    form = browser.get("/audit/login")
    assert form.status_code == 200
    assert form.headers["content-type"].startswith("text/html")
    assert 'name="username"' in form.text and 'type="password"' in form.text

    response = browser.post(
        "/audit/login", data={"csrf_token": csrf_of(form.text), "username": audit_log.username, "password": audit_log.password}
    )

    assert location(response) == "/audit/"
    dashboard = browser.get("/audit/")
    assert dashboard.status_code == 200
    assert audit_log.username in dashboard.text
    assert "Log out" in dashboard.text


def test_a_login_without_or_with_a_wrong_csrf_token_is_refused(browser: httpx.Client, audit_log: AuditLog) -> None:
    credentials = {"username": audit_log.username, "password": audit_log.password}
    without_session = browser.post("/audit/login", data=credentials)
    assert without_session.status_code == 400
    browser.get("/audit/login")  # now the session has a token, which the post does not carry
    missing = browser.post("/audit/login", data=credentials)
    wrong = browser.post("/audit/login", data={**credentials, "csrf_token": "not-the-token"})

    for response in (without_session, missing, wrong):
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("text/html")
        assert "did not come from this site" in response.text
    assert location(browser.get("/audit/")).startswith("/audit/login")


def test_a_wrong_password_or_unknown_user_gets_the_form_again_with_401(browser: httpx.Client, audit_log: AuditLog) -> None:
    wrong_password = log_in(browser, audit_log.username, "not the password at all")
    unknown_user = log_in(browser, f"nobody-{uuid.uuid4().hex[:6]}", audit_log.password)
    empty = log_in(browser, audit_log.username, "")

    for response in (wrong_password, unknown_user, empty):
        assert response.status_code == 401
        assert "Wrong username or password" in response.text
        assert 'name="password"' in response.text
    assert location(browser.get("/audit/")).startswith("/audit/login")


def test_every_page_redirects_to_the_login_form_without_a_session(browser: httpx.Client, audit_log: AuditLog) -> None:
    decision = audit_log.calls["likely"].id
    paths = ("/audit/", "/audit/decisions", f"/audit/decisions/{decision}", "/audit/decisions?band=likely")
    later = (
        "/audit/governance",
        "/audit/access",
        "/audit/checkpoints",
        "/audit/checkpoints/1/note",
        "/audit/checkpoints/1/consistency",
        "/audit/checkpoints/consistency?from=1",
    )
    for path in (*paths, *later):
        target = location(browser.get(path))
        parts = urlsplit(target)
        assert parts.path == "/audit/login", path
        assert parse_qs(parts.query)["next"][0].rstrip("?") == path


def test_an_ehr_jwt_never_opens_the_pages(audit_log: AuditLog) -> None:
    running = audit_log.running
    with httpx.Client(base_url=running.base_url, timeout=10, follow_redirects=False) as ehr:
        for path in ("/audit/", "/audit/decisions", f"/audit/decisions/{audit_log.calls['likely'].id}"):
            response = ehr.get(path, headers=running.headers(path))
            assert response.status_code == 302, (path, response.status_code)
            assert urlsplit(response.headers["location"]).path == "/audit/login"
        # the same token is good for the CDS service itself, so it is refused here for what it is
        assert ehr.get("/cds-services", headers=running.headers("/cds-services")).status_code == 200


def test_after_login_the_next_page_is_opened_but_only_within_audit(browser: httpx.Client, audit_log: AuditLog) -> None:
    first = location(browser.get("/audit/decisions?band=likely"))
    next_page = parse_qs(urlsplit(first).query)["next"][0]
    assert location(log_in(browser, audit_log.username, audit_log.password, next=next_page)) == "/audit/decisions?band=likely"

    for attempt in (
        "https://evil.example",
        "https://evil.example/audit/",
        "//evil.example/audit/",
        "/\\evil.example",
        "/cds-services",
        "/audit/../cds-services",
        "/audit/%2e%2e/cds-services",
        "javascript:alert(1)",
    ):
        with httpx.Client(base_url=audit_log.running.base_url, timeout=10, follow_redirects=False) as client:
            response = log_in(client, audit_log.username, audit_log.password, next=attempt)
            assert response.headers["location"] == "/audit/", attempt


def test_logout_needs_the_csrf_token_and_ends_the_session(auditor: httpx.Client) -> None:
    dashboard = auditor.get("/audit/")
    assert auditor.post("/audit/logout").status_code == 400
    assert auditor.get("/audit/").status_code == 200  # still logged in

    response = auditor.post("/audit/logout", data={"csrf_token": csrf_of(dashboard.text)})

    assert location(response) == "/audit/login"
    assert location(auditor.get("/audit/")).startswith("/audit/login")
    assert location(auditor.get("/audit/decisions")).startswith("/audit/login")


def test_the_pages_only_read(auditor: httpx.Client, audit_log: AuditLog) -> None:
    token = csrf_of(auditor.get("/audit/").text)
    for path in ("/audit/", "/audit/decisions", f"/audit/decisions/{audit_log.calls['likely'].id}"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            response = auditor.request(method, path, data={"csrf_token": token})
            assert response.status_code == 405, (method, path)


# -- the dashboard -----------------------------------------------------------------------------------


def test_the_dashboard_draws_charts_of_the_log(auditor: httpx.Client, audit_log: AuditLog) -> None:
    response = auditor.get("/audit/")

    assert response.status_code == 200
    html = response.text
    assert len(svg_charts(html)) == 6
    assert (html.count("<rect") > 5 and "<polyline" in html) or html.count("<circle") >= 2
    # the log: 7 decisions, 3 cards (likely, possible, order-sign), one accepted, one overridden
    assert re.search(r'id="total-decisions">7<', html)
    assert re.search(r'id="total-cards">3<', html)
    assert re.search(r'id="total-accepted">1 <small>\(33.3%\)', html)
    assert re.search(r'id="total-overridden">1 <small>\(33.3%\)', html)
    bands = aria_label(html, "Decisions by band")
    assert "likely 2" in bands and "possible 1" in bands and "unlikely 1" in bands and "not assessed 3" in bands
    assert "knee-cause-confirmed 1" in aria_label(html, "Override reasons")
    day = TODAY.isoformat()
    assert f"{day} 3" in aria_label(html, "Cards shown per day")
    rates = aria_label(html, "Accept and override rates per day (share of cards shown)")
    assert f"accepted {day} 33.3%" in rates and f"overridden {day} 33.3%" in rates
    assert "p50" in aria_label(html, "Latency percentiles")
    assert "<title>likely: 2</title>" in html  # a bar's tooltip
    assert 'id="integrity-badge"' in html and "Never verified" in html


def test_the_dashboard_filters_like_the_table(auditor: httpx.Client, audit_log: AuditLog) -> None:
    north = auditor.get("/audit/", params={"tenant": audit_log.north})
    assert north.status_code == 200
    assert re.search(r'id="total-decisions">4<', north.text)  # likely, possible, invalid, refused
    assert "possible 1" in aria_label(north.text, "Decisions by band")

    empty = auditor.get("/audit/", params={"from": "2001-01-01", "to": "2001-01-31"})
    assert empty.status_code == 200
    assert re.search(r'id="total-decisions">0<', empty.text)
    assert aria_label(empty.text, "Cards shown per day") == "Cards shown per day: no data"

    bad = auditor.get("/audit/", params={"from": "last tuesday"})
    assert bad.status_code == 400
    assert "must be a date" in bad.text
    assert "<svg" not in bad.text


def test_the_integrity_badge_shows_the_latest_verification(service_factory: Callable[..., RunningService]) -> None:
    from cds_service.database import utcnow
    from cds_service.decision_log.tables import Verification

    running = service_factory()
    engine = running.app.extensions["spine_cds"].engine
    add_user(engine, "badge-auditor", AUDITOR_PASSWORD, method=CHEAP_PASSWORD_HASH)
    with httpx.Client(base_url=running.base_url, timeout=10) as client:
        log_in(client, "badge-auditor", AUDITOR_PASSWORD)
        with engine.begin() as connection:
            connection.execute(Verification.__table__.insert().values(created_at=utcnow(), ok=True, entries=12, head_seq=41))
        ok = client.get("/audit/").text
        assert "badge-ok" in ok and "Log intact" in ok and "head seq 41" in ok and "12 entries" in ok
        with engine.begin() as connection:
            connection.execute(
                Verification.__table__.insert().values(
                    created_at=utcnow(), ok=False, entries=12, head_seq=41, problem="entry 7: <hash> does not match"
                )
            )
        broken = client.get("/audit/").text
        assert "badge-broken" in broken and "integrity broken" in broken
        assert "entry 7: &lt;hash&gt; does not match" in broken


# -- the table ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_table_filters_narrow_the_rows(
    database: str, audit_log_factory: Callable[..., AuditLog], request: pytest.FixtureRequest
) -> None:
    settings: dict[str, Any] = {}
    if database == "postgresql":  # a database shared by the session: every query also names this log's tenants
        settings["database_url"] = request.getfixturevalue("postgres_url")
    log = audit_log_factory(**settings)
    with httpx.Client(base_url=log.running.base_url, timeout=10) as client:
        log_in(client, log.username, log.password)

        def names(**params: str) -> set[str]:
            response = client.get("/audit/decisions", params=params)
            assert response.status_code == 200, response.text
            return log.names(row_ids(response.text))

        assert names(tenant=log.north) == {"likely", "possible", "invalid", "refused"}
        assert names(tenant=log.south) == {"no-card", "child", "order"}
        assert names(tenant=log.south, band="likely") == {"order"}
        assert names(tenant=log.north, band="likely") == {"likely"}
        assert names(tenant=log.south, service="spine-knee-order-sign") == {"order"}
        assert names(tenant=log.south, hook="patient-view", outcome="no-card") == {"no-card", "child"}
        assert names(tenant=log.north, user="PractitionerRole/nurse-7") == {"possible"}
        assert names(patient=log.calls["likely"].patient_id) == {"likely", "refused"}
        assert names(patient=log.calls["order"].patient_id) == {"order"}
        assert names(tenant=log.north, **{"from": "2001-01-01", "to": "2001-12-31"}) == set()


def test_the_table_sorts_and_pages(auditor: httpx.Client, audit_log: AuditLog) -> None:
    everything = row_ids(auditor.get("/audit/decisions").text)
    assert sorted(everything, reverse=True) == everything  # newest first
    assert set(audit_log.names(everything)) == set(audit_log.calls)

    oldest_first = auditor.get("/audit/decisions", params={"sort": "created_at"})
    assert row_ids(oldest_first.text) == sorted(everything)

    first = auditor.get("/audit/decisions", params={"per_page": "3", "tenant": audit_log.north})
    assert "Page 1 of 2" in first.text and "Decisions 1\N{EN DASH}3 of 4" in first.text
    next_link = re.search(r'<a rel="next" href="([^"]+)"', first.text)
    assert next_link
    target = unescape(next_link.group(1))
    assert parse_qs(urlsplit(target).query) == {"per_page": ["3"], "tenant": [audit_log.north], "page": ["2"]}
    second = auditor.get(target)
    assert "Page 2 of 2" in second.text
    assert len(row_ids(first.text)) == 3 and len(row_ids(second.text)) == 1
    assert not set(row_ids(first.text)) & set(row_ids(second.text))

    by_latency = auditor.get("/audit/decisions", params={"sort": "-latency_ms"})
    assert 'aria-sort="descending"><a href="/audit/decisions?sort=latency_ms">Latency' in by_latency.text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "yesterday"}, "must be a date"),
        ({"colour": "red"}, "Unknown parameter(s): colour"),
        ({"sort": "patient_id"}, "must be one of"),
        ({"page": "0"}, "between 1 and"),
        ({"per_page": "many"}, "whole numbers"),
    ],
)
def test_invalid_filters_show_a_message(auditor: httpx.Client, params: dict[str, str], message: str) -> None:
    response = auditor.get("/audit/decisions", params=params)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert 'id="filter-problem"' in response.text and message in unescape(response.text)
    assert row_ids(response.text) == []


# -- one decision ------------------------------------------------------------------------------------


def test_the_detail_page_shows_the_cards_findings_and_feedback(auditor: httpx.Client, audit_log: AuditLog) -> None:
    likely = audit_log.calls["likely"]
    card = likely.cards[0]

    response = auditor.get(f"/audit/decisions/{likely.id}")

    assert response.status_code == 200
    html = unescape(response.text)
    assert card["summary"] in html
    assert 'class="card indicator-warning"' in html
    detail = response.text.split('class="card-detail"')[1].split("</div>", 1)[0]
    assert "<strong>Likely</strong>" in detail and "<li>" in detail  # the detail Markdown, rendered
    with audit_log.engine.connect() as connection:
        assessment = connection.execute(select(Decision.assessment).where(Decision.id == likely.id)).scalar_one()
    for finding in assessment["findings"]:
        assert finding["label"] in html
        for reference in finding["references"]:
            assert reference in html
        assert finding["date"] in html
        if finding.get("counted_with"):  # what a finding added after the group rules, and with what it counted
            assert f"counted with <code>{finding['counted_with']}</code>" in response.text
    model = audit_log.running.client.get("/model.json").json()
    assert model["version"] in html and model["hash"] in html
    assert "accepted" in response.text.split('id="feedback"')[1]
    pseudonym = audit_log.running.app.extensions["spine_cds"].decision_log.pseudonym(likely.patient_id)
    assert pseudonym in html
    audit_log.assert_no_patient_id(response.text)

    order = auditor.get(f"/audit/decisions/{audit_log.calls['order'].id}").text
    feedback = order.split('id="feedback"')[1]
    assert "overridden" in feedback and "knee-cause-confirmed" in feedback and "Meniscal tear on exam" in feedback


def test_the_detail_of_an_unassessed_call_and_of_no_decision(auditor: httpx.Client, audit_log: AuditLog) -> None:
    invalid = auditor.get(f"/audit/decisions/{audit_log.calls['invalid'].id}")
    assert invalid.status_code == 200
    assert "No card was shown" in invalid.text and "invalid_request" in invalid.text

    missing = auditor.get("/audit/decisions/999999")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "There is no decision 999999" in missing.text


def test_values_from_the_ehr_are_escaped(service_factory: Callable[..., RunningService]) -> None:
    running = service_factory()
    add_user(running.app.extensions["spine_cds"].engine, "escape-auditor", AUDITOR_PASSWORD, method=CHEAP_PASSWORD_HASH)
    body = patient_view_of(generate("radiculopathy-knee-pain", seed=7, today=TODAY))
    body["context"]["userId"] = '<script>alert("x")</script>'
    assert_cards_response(running.post("/cds-services/spine-knee-patient-view", body, tenant='<img src=x onerror="alert(1)">'))
    with httpx.Client(base_url=running.base_url, timeout=10) as client:
        log_in(client, "escape-auditor", AUDITOR_PASSWORD)
        table = client.get("/audit/decisions").text
        detail = client.get(f"/audit/decisions/{row_ids(table)[0]}").text
    for html in (table, detail):
        assert "<script>" not in html and "<img" not in html
        assert "&lt;script&gt;" in html


def test_card_markdown_cannot_carry_html_or_script_links() -> None:
    html = str(render_markdown("**b** <script>x()</script> [go](javascript:alert(1)) [ok](https://example.org) <i>i</i>"))
    assert "<strong>b</strong>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html and "<i>" not in html
    assert "javascript:" not in html
    assert '<a href="https://example.org">ok</a>' in html


# -- the access log ----------------------------------------------------------------------------------


def test_every_search_and_view_is_logged_without_patient_ids(auditor: httpx.Client, audit_log: AuditLog) -> None:
    likely = audit_log.calls["likely"]
    before = len(audit_log.access_log())

    assert auditor.get("/audit/", params={"band": "likely"}).status_code == 200
    assert auditor.get("/audit/decisions", params={"patient": likely.patient_id, "band": "likely"}).status_code == 200
    assert auditor.get(f"/audit/decisions/{likely.id}").status_code == 200
    assert auditor.get("/audit/decisions", params={"from": "nonsense"}).status_code == 400  # nothing searched

    rows = new_access(audit_log, before)
    assert [r["action"] for r in rows] == ["page.dashboard", "page.search", "page.view"]
    assert {r["username"] for r in rows} == {audit_log.username}
    pseudonym = audit_log.running.app.extensions["spine_cds"].decision_log.pseudonym(likely.patient_id)
    assert rows[0]["details"]["band"] == "likely"
    assert rows[1]["details"]["patient_pseudonym"] == pseudonym
    assert rows[1]["details"]["band"] == "likely"
    assert rows[2]["details"] == {"decision_id": likely.id}
    audit_log.assert_no_patient_id(json.dumps([r["details"] for r in rows]))


# -- headers and markup ------------------------------------------------------------------------------


def test_security_headers_on_every_audit_response(browser: httpx.Client, audit_log: AuditLog) -> None:
    responses = [browser.get("/audit/login"), browser.get("/audit/"), browser.post("/audit/login", data={})]
    log_in(browser, audit_log.username, audit_log.password)
    for path in ("/audit/", "/audit/decisions", f"/audit/decisions/{audit_log.calls['likely'].id}", "/audit/decisions/0"):
        responses.append(browser.get(path))
    responses.append(browser.get("/audit/decisions", params={"from": "x"}))
    responses.append(browser.get("/audit/static/audit.css"))
    assert responses[-1].status_code == 200 and responses[-1].headers["content-type"].startswith("text/css")

    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.url, name)
        if response.headers["content-type"].startswith("text/html"):
            assert "<script" not in response.text
            assert "style=" not in response.text and "<style" not in response.text  # the CSP forbids inline styles


# -- the charts themselves ---------------------------------------------------------------------------


def test_charts_are_accessible_svg_with_tooltips() -> None:
    bars = str(charts.bar_chart("Things <by> kind", [("a & b", 3), ("c", 1.5)], unit="ms", whole=False))
    assert bars.startswith("<svg ") and 'role="img"' in bars
    assert 'aria-label="Things &lt;by&gt; kind: a &amp; b 3 ms; c 1.5 ms"' in bars
    assert "<title>Things &lt;by&gt; kind</title>" in bars
    assert "<title>a &amp; b: 3 ms</title>" in bars and bars.count('class="bar"') == 2

    horizontal = str(charts.bar_chart("Bands", [("likely", 2), ("possible", 1)], horizontal=True))
    assert horizontal.count('class="bar"') == 2 and "<title>likely: 2</title>" in horizontal

    lines = str(charts.line_chart("Rates", ["d1", "d2", "d3"], [charts.Series("accepted", [50, None, 25])], unit="%", y_max=100))
    assert lines.count('class="point"') == 2 and "<title>accepted, d3: 25%</title>" in lines
    assert 'aria-label="Rates: accepted d1 50%; accepted d3 25%"' in lines
    assert "<polyline" not in lines  # a gap between the two points: no line across it

    over = str(charts.line_chart("Rates", ["d1"], [charts.Series("accepted", [150])], unit="%", y_max=100))
    assert ">150%</text>" in over  # y_max is a floor: a value above it still fits the axis

    empty = str(charts.line_chart("Rates", [], []))
    assert 'aria-label="Rates: no data"' in empty and "No data in this range" in empty
    assert charts.nice_ticks(7, whole=True) == [0, 2, 4, 6, 8]


def test_a_deactivated_account_loses_its_open_session(service_factory: Callable[..., RunningService]) -> None:
    running = service_factory()
    engine = running.app.extensions["spine_cds"].engine
    add_user(engine, "leaving-auditor", "a-long-auditor-password", method=CHEAP_PASSWORD_HASH)
    with httpx.Client(base_url=running.base_url, timeout=10, follow_redirects=False) as client:
        assert location(log_in(client, "leaving-auditor", "a-long-auditor-password")) == "/audit/"
        assert client.get("/audit/").status_code == 200
        with engine.begin() as connection:
            connection.execute(text("UPDATE users SET active = false WHERE username = 'leaving-auditor'"))
        assert location(client.get("/audit/")).startswith("/audit/login")
        assert client.get("/audit/api/stats").status_code == 401


def test_audit_pages_carry_no_cors_headers(auditor: httpx.Client) -> None:
    response = auditor.get("/audit/", headers={"Origin": "https://elsewhere.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_the_population_page_lists_jobs_with_their_counts(service_factory: Callable[..., RunningService]) -> None:
    from datetime import date

    from hooks.model import load_model
    from worker import population

    running = service_factory()
    engine = running.app.extensions["spine_cds"].engine
    add_user(engine, "population-auditor", "a-long-auditor-password", method=CHEAP_PASSWORD_HASH)
    job_id = population.create_job(engine, load_model(), "/exports/site-a", date(2026, 11, 24))
    population.register_chunks(engine, job_id, 2)
    rows = [{"job_id": job_id, "chunk": 0, "patient_id": "p-77", "status": "scored", "worklist": True, "band": "likely"}]
    assert population.record_chunk(engine, job_id, 0, rows)
    with httpx.Client(base_url=running.base_url, timeout=10, follow_redirects=False) as client:
        assert location(client.get("/audit/population")).startswith("/audit/login")
        assert location(log_in(client, "population-auditor", "a-long-auditor-password")) == "/audit/"
        page = client.get("/audit/population")
    assert page.status_code == 200
    assert job_id in page.text and 'data-status="scoring"' in page.text
    assert "1 / 2 chunks" in page.text
    assert "p-77" not in page.text  # counts only: worklists name patients and stay with the job's files
    with engine.connect() as connection:
        actions = connection.execute(text("SELECT action FROM access_log ORDER BY id")).scalars().all()
    assert actions[-1] == "page.population"
