"""Refused calls are counted (issuer claimed, reason code, hour; never the token) and shown to auditors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import select, text

from cds_service.auditor.accounts import add_user
from cds_service.cds_hooks.tables import RefusedCalls
from tests.support import CHEAP_PASSWORD_HASH, RunningService, SigningEhr

DISCOVERY = "/cds-services"
PASSWORD = "a long enough passphrase"


def _counts(running: RunningService) -> dict[tuple[str, str], int]:
    engine = running.app.extensions["spine_cds"].engine
    with engine.connect() as connection:
        rows = connection.execute(select(RefusedCalls.issuer, RefusedCalls.reason_code, RefusedCalls.count)).all()
    return {(r.issuer, r.reason_code): r.count for r in rows}


def _refuse(running: RunningService, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = running.client.get(DISCOVERY, headers=headers)
    assert response.status_code == 401
    return response


def test_refused_calls_are_counted_by_issuer_and_reason_and_shown_on_the_dashboard(
    service_factory: Callable[..., RunningService], database_url: str, ehr: SigningEhr
) -> None:
    running = service_factory(database_url=database_url)
    engine = running.app.extensions["spine_cds"].engine
    with engine.begin() as connection:  # PostgreSQL is shared by the session: count from nothing
        connection.execute(text("DELETE FROM refused_calls"))
    audience = running.base_url + DISCOVERY
    forger = SigningEhr(issuer=ehr.issuer)  # claims the trusted issuer, signs with other keys
    stranger = SigningEhr(issuer="https://unknown.example.org")
    tokens: list[str] = []
    _refuse(running, None)
    for _ in range(2):
        tokens.append(forger.token(audience))
        _refuse(running, tokens[-1])
    tokens.append(stranger.token(audience))
    _refuse(running, tokens[-1])
    used = ehr.token(audience)
    assert running.client.get(DISCOVERY, headers={"Authorization": f"Bearer {used}"}).status_code == 200
    _refuse(running, used)
    tokens.append(used)

    assert _counts(running) == {
        ("", "no_bearer_token"): 1,
        (ehr.issuer, "signature"): 2,
        ("", "issuer"): 1,  # an issuer the service does not trust is not named
        (ehr.issuer, "replay"): 1,
    }

    add_user(engine, "refusal-auditor", PASSWORD, method=CHEAP_PASSWORD_HASH)
    dashboard = running.client.get("/audit/", auth=("refusal-auditor", PASSWORD))
    assert dashboard.status_code == 200
    section = dashboard.text.split('id="refused-calls"', 1)[1].split("</section>", 1)[0]
    assert ehr.issuer in section and "not a trusted issuer" in section
    for code in ("no_bearer_token", "signature", "issuer", "replay"):
        assert f"<code>{code}</code>" in section
    assert "unknown.example.org" not in section

    stored = _dump(engine)
    for token in tokens:
        assert token not in stored and token.split(".")[2] not in stored


def _dump(engine: Any) -> str:
    """Every table's rows as text: what a database administrator could read."""
    with engine.connect() as connection:
        names = [r[0] for r in connection.execute(text(_TABLES[engine.dialect.name]))]
        return "\n".join(str(connection.execute(text(f'SELECT * FROM "{name}"')).all()) for name in names)


_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()",
}


def test_a_refused_call_is_answered_401_when_the_count_cannot_be_written(service: RunningService, ehr: SigningEhr) -> None:
    """Counting is best effort: with its table gone, the caller still gets a bare 401 and nothing else breaks."""
    engine = service.app.extensions["spine_cds"].engine
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE refused_calls RENAME TO refused_calls_away"))
    try:
        response = _refuse(service, SigningEhr(issuer=ehr.issuer).token(service.base_url + DISCOVERY))
        assert response.content == b""
        assert service.get(DISCOVERY).status_code == 200
    finally:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE refused_calls_away RENAME TO refused_calls"))
