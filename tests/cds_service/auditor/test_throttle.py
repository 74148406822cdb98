"""Limits on guessing auditor passwords, over real HTTP (form and Basic) and on a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from cds_service.auditor.accounts import add_user
from cds_service.auditor.throttle import MemoryAttempts, RedisAttempts
from tests.cds_service.auditor.test_pages import csrf_of, location, log_in
from tests.conftest import redis_client_or_skip
from tests.support import CHEAP_PASSWORD_HASH, RunningService

PASSWORD = "correct horse battery staple"
WRONG = "not the password at all"
REDIS_URL = "redis://127.0.0.1:6379/15"


def new_auditor(running: RunningService) -> str:
    username = f"auditor-{uuid.uuid4().hex[:8]}"
    add_user(running.app.extensions["spine_cds"].engine, username, PASSWORD, method=CHEAP_PASSWORD_HASH)
    return username


def browser(running: RunningService) -> httpx.Client:
    return httpx.Client(base_url=running.base_url, timeout=10, follow_redirects=False)


def api_as(running: RunningService, username: str, password: str) -> httpx.Response:
    return running.client.get("/audit/api/decisions", auth=(username, password))


@pytest.fixture
def throttled(service_factory: Callable[..., RunningService]) -> RunningService:
    """A service of its own (its own counters) that locks an account after 3 failed logins."""
    return service_factory(login_max_failures=3, login_lockout_seconds=900)


def test_failed_logins_lock_the_account_on_the_form_and_the_api(throttled: RunningService) -> None:
    username, other = new_auditor(throttled), new_auditor(throttled)
    with browser(throttled) as client:
        for _ in range(3):
            assert log_in(client, username, WRONG).status_code == 401

        locked = log_in(client, username, PASSWORD)  # the right password, too late
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= 900
        assert "Too many failed logins; try again in 15 minute(s)." in locked.text
        assert 'name="password"' in locked.text
        assert location(client.get("/audit/")).startswith("/audit/login")

    api = api_as(throttled, username, PASSWORD)
    assert api.status_code == 429
    assert api.json()["error"]["code"] == "too_many_attempts"
    assert 0 < int(api.headers["retry-after"]) <= 900

    # another account from the same address is not locked with it
    with browser(throttled) as client:
        assert location(log_in(client, other, PASSWORD)) == "/audit/"
    assert api_as(throttled, other, PASSWORD).status_code == 200


def test_wrong_basic_credentials_count_like_wrong_form_logins(throttled: RunningService) -> None:
    username = new_auditor(throttled)
    for _ in range(2):
        assert api_as(throttled, username, WRONG).status_code == 401
    with browser(throttled) as client:
        assert log_in(client, username, WRONG).status_code == 401
        assert log_in(client, username, PASSWORD).status_code == 429


def test_a_successful_login_starts_the_account_count_again(throttled: RunningService) -> None:
    username = new_auditor(throttled)
    with browser(throttled) as client:
        for _ in range(2):
            assert log_in(client, username, WRONG).status_code == 401
        assert location(log_in(client, username, PASSWORD)) == "/audit/"
    with browser(throttled) as client:
        for _ in range(2):
            assert log_in(client, username, WRONG).status_code == 401
        assert location(log_in(client, username, PASSWORD)) == "/audit/"


def test_one_address_is_locked_after_five_times_the_account_limit(service_factory: Callable[..., RunningService]) -> None:
    running = service_factory(login_max_failures=1)
    guessed = [f"guess-{uuid.uuid4().hex[:6]}" for _ in range(5)]  # unknown names fail like wrong passwords
    with browser(running) as client:
        for name in guessed:
            assert log_in(client, name, WRONG).status_code == 401
        # every account of this address is refused now, even a real one with its password
        assert log_in(client, new_auditor(running), PASSWORD).status_code == 429


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_starts_at_the_first_failure_and_is_not_extended() -> None:
    clock = Clock()
    store = MemoryAttempts(clock)
    store.add("account:a", 900)
    clock.now += 600
    store.add("account:a", 900)
    assert store.count("account:a") == (2, 300)
    clock.now += 300
    assert store.count("account:a") == (0, 0)
    store.add("account:a", 900)
    assert store.count("account:a") == (1, 900)
    store.clear("account:a")
    assert store.count("account:a") == (0, 0)


@pytest.fixture
def login_keys() -> Iterator[redis.Redis]:
    """Redis db 15 without login counters before and after; a failure in CI when Redis is down."""
    client = redis_client_or_skip(REDIS_URL)

    def clear() -> None:
        keys = list(client.scan_iter("spine-cds:login:*"))
        if keys:
            client.delete(*keys)

    clear()
    yield client
    clear()
    client.close()


def test_counters_in_redis_are_shared_by_every_process(
    service_factory: Callable[..., RunningService], login_keys: redis.Redis
) -> None:
    first = service_factory(redis_url=REDIS_URL, login_max_failures=2, login_lockout_seconds=600)
    second = service_factory(redis_url=REDIS_URL, login_max_failures=2, login_lockout_seconds=600)
    username = new_auditor(first)
    with browser(first) as client:
        for _ in range(2):
            assert log_in(client, username, WRONG).status_code == 401
    with browser(second) as client:
        assert log_in(client, username, PASSWORD).status_code == 429
    # the account name is stored only as a hash
    keys = [key.decode() for key in login_keys.scan_iter("spine-cds:login:*")]
    assert keys and not any(username in key for key in keys)
    assert all(0 < login_keys.ttl(key) <= 600 for key in keys)


def test_redis_counters_expire_with_their_window(login_keys: redis.Redis) -> None:
    store = RedisAttempts(login_keys)
    store.add("account:b", 600)
    store.add("account:b", 900)  # a later failure does not extend the window
    failures, wait = store.count("account:b")
    assert failures == 2 and 0 < wait <= 600
    store.clear("account:b")
    assert store.count("account:b") == (0, 0)


def guess_from(client: httpx.Client, address: str) -> None:
    form = client.get("/audit/login", headers={"X-Forwarded-For": address})
    data = {"csrf_token": csrf_of(form.text), "username": f"guess-{uuid.uuid4().hex[:6]}", "password": WRONG}
    assert client.post("/audit/login", data=data, headers={"X-Forwarded-For": address}).status_code == 401


def log_in_from(client: httpx.Client, address: str, username: str) -> int:
    form = client.get("/audit/login", headers={"X-Forwarded-For": address})
    data = {"csrf_token": csrf_of(form.text), "username": username, "password": PASSWORD}
    return client.post("/audit/login", data=data, headers={"X-Forwarded-For": address}).status_code


def test_behind_a_proxy_the_forwarded_client_address_is_counted(service_factory: Callable[..., RunningService]) -> None:
    running = service_factory(login_max_failures=1, proxy_hops=1)
    with browser(running) as client:
        for _ in range(5):
            guess_from(client, "203.0.113.7")
        assert log_in_from(client, "203.0.113.7", new_auditor(running)) == 429
        assert log_in_from(client, "198.51.100.20", new_auditor(running)) == 302


def test_without_a_proxy_a_forged_forwarded_address_changes_nothing(service_factory: Callable[..., RunningService]) -> None:
    running = service_factory(login_max_failures=1)
    with browser(running) as client:
        for _ in range(5):
            guess_from(client, "203.0.113.7")
        assert log_in_from(client, "198.51.100.20", new_auditor(running)) == 429
