"""The auditor pages in a real headless Chromium driven by Selenium (Debian's chromium and chromedriver).

Outside CI the tests are skipped when the browser, its driver or Selenium is missing; in CI they fail
instead. Selenium is given the driver's path, so Selenium Manager never downloads anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cds_service.decision_log.transparency import extend_and_sign
from tests.cds_service.audit_log import AuditLog
from tests.conftest import IN_CI

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    SELENIUM = True
except ImportError:  # pragma: no cover - only without the dev extra
    SELENIUM = False

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,2600",
)
WAIT = 15  # seconds, an upper bound: every wait ends as soon as its condition holds


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not SELENIUM:
        missing.append("the selenium package")
    if missing:
        message = f"the browser tests need {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT)


def path_of(driver: WebDriver) -> str:
    return urlsplit(driver.current_url).path


def submit_login(driver: WebDriver, username: str, password: str) -> None:
    wait(driver).until(ec.visibility_of_element_located((By.ID, "username")))
    driver.find_element(By.ID, "username").clear()
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def test_an_auditor_logs_in_searches_opens_a_decision_and_sees_the_charts(
    driver: WebDriver, audit_log: AuditLog, tmp_path: Path
) -> None:
    base = audit_log.running.base_url
    driver.get(base + "/audit/")
    wait(driver).until(ec.url_contains("/audit/login"))
    submit_login(driver, audit_log.username, audit_log.password)
    wait(driver).until(ec.presence_of_element_located((By.ID, "integrity-badge")))
    assert path_of(driver) == "/audit/"

    # the table, filtered to the `likely` band through the form
    driver.find_element(By.LINK_TEXT, "Decisions").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "decisions")))
    assert len(driver.find_elements(By.CSS_SELECTOR, "tr.decision-row")) == len(audit_log.calls)
    Select(driver.find_element(By.ID, "f-band")).select_by_value("likely")
    driver.find_element(By.ID, "apply-filters").click()
    wait(driver).until(ec.url_contains("band=likely"))
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.decision-row")
    assert {row.get_attribute("data-band") for row in rows} == {"likely"}
    ids = {int(row.get_attribute("data-id") or 0) for row in rows}
    assert audit_log.names(list(ids)) == {"likely", "order"}
    assert parse_qs(urlsplit(driver.current_url).query)["band"] == ["likely"]

    # one decision, with the card as the clinician saw it
    likely = audit_log.calls["likely"]
    driver.find_element(By.CSS_SELECTOR, f'tr.decision-row[data-id="{likely.id}"] a.decision-link').click()
    summary = wait(driver).until(ec.visibility_of_element_located((By.CSS_SELECTOR, "h3.card-summary")))
    assert summary.text == likely.cards[0]["summary"]
    assert path_of(driver) == f"/audit/decisions/{likely.id}"
    assert driver.find_elements(By.CSS_SELECTOR, ".card-detail li")  # the detail's Markdown list of findings, rendered
    assert len(driver.find_elements(By.CSS_SELECTOR, "tr.finding")) >= 1
    assert "accepted" in driver.find_element(By.ID, "feedback").text

    # the dashboard's charts, drawn
    driver.find_element(By.LINK_TEXT, "Dashboard").click()
    wait(driver).until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#chart-bands svg")))
    svgs = driver.find_elements(By.CSS_SELECTOR, 'svg[role="img"]')
    assert len(svgs) == 6
    for svg in svgs:
        assert svg.size["width"] > 100 and svg.size["height"] > 50, svg.get_attribute("aria-label")
        assert svg.get_attribute("aria-label")
    for chart in ("chart-cards", "chart-bands", "chart-reasons", "chart-outcomes", "chart-latency"):
        bars = driver.find_elements(By.CSS_SELECTOR, f"#{chart} svg rect.bar")
        assert bars, chart
        assert max(bar.size["width"] for bar in bars) > 0 and max(bar.size["height"] for bar in bars) > 0, chart
    assert driver.find_elements(By.CSS_SELECTOR, "#chart-rates svg circle.point")
    bands = driver.find_element(By.CSS_SELECTOR, "#chart-bands svg").get_attribute("aria-label") or ""
    assert "likely 2" in bands
    driver.save_screenshot(str(tmp_path / "dashboard.png"))


def test_a_wrong_password_is_refused_and_an_ehr_jwt_opens_nothing(driver: WebDriver, audit_log: AuditLog) -> None:
    running = audit_log.running
    driver.get(running.base_url + "/audit/login")
    submit_login(driver, audit_log.username, "this is not the password")
    error = wait(driver).until(ec.visibility_of_element_located((By.ID, "login-error")))
    assert "Wrong username or password" in error.text
    assert path_of(driver) == "/audit/login"
    assert not driver.find_elements(By.CSS_SELECTOR, "form.logout")

    # the browser sends an EHR's Authorization header with every request from here on
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": running.headers("/cds-services")})
    driver.get(running.base_url + "/cds-services")
    assert "spine-knee-patient-view" in driver.find_element(By.TAG_NAME, "body").text  # the header is sent: the token works
    for path in ("/audit/", "/audit/decisions", f"/audit/decisions/{audit_log.calls['likely'].id}"):
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": running.headers(path)})
        driver.get(running.base_url + path)
        wait(driver).until(ec.presence_of_element_located((By.ID, "username")))
        assert path_of(driver) == "/audit/login", path
        assert not driver.find_elements(By.ID, "decisions") and not driver.find_elements(By.CSS_SELECTOR, "svg")


def test_an_auditor_reads_why_the_governance_figures_and_the_access_log(driver: WebDriver, audit_log: AuditLog) -> None:
    base = audit_log.running.base_url
    driver.get(base + "/audit/login")
    submit_login(driver, audit_log.username, audit_log.password)
    wait(driver).until(ec.presence_of_element_located((By.ID, "integrity-badge")))
    assert driver.find_element(By.ID, "refused-calls").is_displayed()

    # why a decision came out as it did, and its proof offered for download
    child = audit_log.calls["child"]
    driver.get(f"{base}/audit/decisions/{child.id}")
    why = wait(driver).until(ec.visibility_of_element_located((By.ID, "decision-reason")))
    assert why.text.startswith("not-eligible") and "outside the model" in why.text
    assert (driver.find_element(By.ID, "proof-download").get_attribute("href") or "").endswith(f"/audit/decisions/{child.id}/proof")

    # the committee's view: one row per site, hook and model version, the frequent ones flagged, a trend drawn
    driver.find_element(By.LINK_TEXT, "Governance").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "governance-groups")))
    driver.find_element(By.ID, "g-tenant").send_keys(audit_log.south)
    driver.find_element(By.ID, "apply-governance").click()
    wait(driver).until(ec.url_contains(f"tenant={audit_log.south}"))
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.governance-row")
    assert len(rows) == 2
    assert len(driver.find_elements(By.CSS_SELECTOR, "tr.governance-row.warning")) == 1  # the order-sign card
    charts = driver.find_elements(By.CSS_SELECTOR, '#trend-heading ~ figure svg[role="img"]')
    assert charts and all(svg.size["width"] > 100 for svg in charts)

    # the access log: this auditor's opening of the child's decision, found by decision id
    driver.find_element(By.LINK_TEXT, "Access log").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "a-decision")))
    driver.find_element(By.ID, "a-decision").send_keys(str(child.id))
    driver.find_element(By.ID, "apply-access-filters").click()
    wait(driver).until(ec.url_contains(f"decision={child.id}"))
    entries = driver.find_elements(By.CSS_SELECTOR, "tr.access-row")
    assert entries and all(audit_log.username in row.text and "page.view" in row.text for row in entries)

    # the signed checkpoints an outside auditor keeps, each offered for download with the proof the log grew since
    parts = audit_log.running.app.extensions["spine_cds"]
    extend_and_sign(parts.engine, parts.runtime.checkpoint_signer)
    driver.find_element(By.LINK_TEXT, "Checkpoints").click()
    key = wait(driver).until(ec.visibility_of_element_located((By.ID, "verifier-key")))
    assert key.text == parts.runtime.checkpoint_signer.verifier_key
    newest = driver.find_elements(By.CSS_SELECTOR, "tr.checkpoint-row")[0]
    size = newest.get_attribute("data-size")
    assert (newest.find_element(By.CSS_SELECTOR, "a.note-download").get_attribute("href") or "").endswith(
        f"/audit/checkpoints/{size}/note"
    )
