"""Redis and PostgreSQL killed (or PostgreSQL stopped) under the service, over real HTTP: cards keep flowing
without Redis; without its database the service answers 503 with Retry-After, never 500, never a hang and
never a card without its row; both recover without a restart. The servers killed here are the tests' own (tests/servers.py)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text

from cds_service.database import make_engine, upgrade
from tests.cds_service.requests import patient_view
from tests.servers import ScratchPostgres, ScratchRedis
from tests.support import RunningService, assert_cards_response, error_of

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"


def test_cards_keep_flowing_when_redis_is_killed_and_it_is_used_again_when_back(
    service_factory: Callable[..., RunningService], own_redis: ScratchRedis
) -> None:
    running = service_factory(redis_url=own_redis.url)
    statuses = []
    for seed in range(20):
        if seed == 10:
            own_redis.kill()
        response = running.post(PATIENT_VIEW, patient_view(seed=600 + seed))
        statuses.append(response.status_code)
        assert len(assert_cards_response(response)) == 1
    assert statuses == [200] * 20
    degraded = running.client.get("/readyz")
    assert degraded.status_code == 200 and degraded.json()["status"] == "degraded"

    own_redis.start()  # the same port: the service finds it again without a restart
    ready = running.client.get("/readyz")
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}


def test_postgres_killed_is_a_503_with_retry_after_and_the_service_recovers(
    service_factory: Callable[..., RunningService], own_postgres: ScratchPostgres
) -> None:
    engine = make_engine(own_postgres.url)
    upgrade(engine)
    engine.dispose()
    running = service_factory(database_url=own_postgres.url, auto_migrate=False)
    before = patient_view(seed=700)
    assert len(assert_cards_response(running.post(PATIENT_VIEW, before))) == 1

    own_postgres.kill()
    during = running.post(PATIENT_VIEW, patient_view(seed=701))
    assert during.status_code == 503
    assert during.headers["Retry-After"] == "2"
    assert error_of(during)["code"] == "database_unavailable"
    assert running.client.get("/readyz").status_code == 503

    own_postgres.start()
    # the pool drops the connections the crash broke: at most one more call sees them, as a 503
    bodies = [patient_view(seed=702 + i) for i in range(3)]
    after = [running.post(PATIENT_VIEW, body) for body in bodies]
    assert {r.status_code for r in after} <= {200, 503}
    assert after[-1].status_code == 200 and len(assert_cards_response(after[-1])) == 1
    # every answer with a card has its row
    logged = _logged_hook_instances(own_postgres.url)
    answered = {body["hookInstance"] for body, r in zip(bodies, after, strict=True) if r.status_code == 200}
    assert {before["hookInstance"], *answered} <= logged


def _logged_hook_instances(url: str) -> set[str]:
    check = make_engine(url)
    try:
        with check.connect() as connection:
            return set(connection.execute(text("SELECT hook_instance FROM decisions WHERE status_code = 200")).scalars())
    finally:
        check.dispose()


def test_postgres_stopped_is_a_503_not_a_hang_and_the_service_recovers(
    service_factory: Callable[..., RunningService], own_postgres: ScratchPostgres
) -> None:
    engine = make_engine(own_postgres.url)
    upgrade(engine)
    engine.dispose()
    # the client gives up (10 s) long after the service's bounds (1 s per round trip here, 2 s to connect or
    # wait for the pool): a call that hangs on the stopped server fails this test instead of answering
    running = service_factory(database_url=own_postgres.url, auto_migrate=False, database_round_trip_seconds=1)
    before = patient_view(seed=720)
    assert len(assert_cards_response(running.post(PATIENT_VIEW, before))) == 1

    own_postgres.pause()
    try:
        # the first call meets a pooled connection (the round-trip bound), the next ones new connections
        # (the connect timeout) or the full pool (its timeout)
        during = [running.post(PATIENT_VIEW, patient_view(seed=721 + i)) for i in range(3)]
        ready = running.client.get("/readyz")
    finally:
        own_postgres.resume()
    for response in during:
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert error_of(response)["code"] == "database_unavailable"
    assert ready.status_code == 503

    bodies = [patient_view(seed=730 + i) for i in range(3)]
    after = [running.post(PATIENT_VIEW, body) for body in bodies]
    assert {r.status_code for r in after} <= {200, 503}
    assert after[-1].status_code == 200 and len(assert_cards_response(after[-1])) == 1
    answered = {body["hookInstance"] for body, r in zip(bodies, after, strict=True) if r.status_code == 200}
    assert {before["hookInstance"], *answered} <= _logged_hook_instances(own_postgres.url)
