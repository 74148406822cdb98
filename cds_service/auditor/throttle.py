"""Limits on guessing auditor passwords: failed logins counted per account and per client address.

After `max_failures` failed logins for one account within `window_seconds`, or five times as many from
one client address (several auditors may share an office's address), no password is checked there
until the window has passed: the caller gets 429 with Retry-After. Counters live in Redis when it is
configured (shared by every process and host), else in the process.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from cds_service.errors import TooManyAttempts
from cds_service.fallback import Breaker

log = logging.getLogger(__name__)


class AttemptStore(Protocol):
    def count(self, key: str) -> tuple[int, int]:
        """(failures in the key's current window, seconds until the window ends)."""
        ...

    def add(self, key: str, window_seconds: int) -> None: ...

    def clear(self, key: str) -> None: ...


class MemoryAttempts:
    """Counters in this process, for the embedded default (one process, no Redis)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._counts: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def count(self, key: str) -> tuple[int, int]:
        now = self._clock()
        with self._lock:
            failures, ends = self._counts.get(key, (0, now))
        return (failures, math.ceil(ends - now)) if ends > now else (0, 0)

    def add(self, key: str, window_seconds: int) -> None:
        now = self._clock()
        with self._lock:
            if len(self._counts) > 10_000:
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            failures, ends = self._counts.get(key, (0, now))
            if ends <= now:
                failures, ends = 0, now + window_seconds
            self._counts[key] = (failures + 1, ends)

    def clear(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)


class RedisAttempts:
    """Counters shared by every process and host: INCR on a key that expires with its window."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def count(self, key: str) -> tuple[int, int]:
        name = f"spine-cds:login:{key}"
        failures, ttl = self._client.pipeline().get(name).ttl(name).execute()
        return (int(failures), max(1, int(ttl))) if failures is not None and ttl > 0 else (0, 0)

    def add(self, key: str, window_seconds: int) -> None:
        name = f"spine-cds:login:{key}"
        # the window starts at the first failure and is not extended by later ones
        self._client.pipeline().incr(name).expire(name, window_seconds, nx=True).execute()

    def clear(self, key: str) -> None:
        self._client.delete(f"spine-cds:login:{key}")


class FallbackAttempts:
    """Redis counters, and this process's own while Redis is unreachable: auditors can still log in (with a
    per-process limit) through an outage."""

    def __init__(self, primary: AttemptStore, fallback: AttemptStore, breaker: Breaker | None = None) -> None:
        self.primary = primary
        self.fallback = fallback
        self.breaker = breaker or Breaker("login limits")

    def count(self, key: str) -> tuple[int, int]:
        if not self.breaker.open:
            try:
                return self.primary.count(key)
            except Exception as exc:
                self.breaker.trip(exc)
        return self.fallback.count(key)

    def add(self, key: str, window_seconds: int) -> None:
        if not self.breaker.open:
            try:
                self.primary.add(key, window_seconds)
                return
            except Exception as exc:
                self.breaker.trip(exc)
        self.fallback.add(key, window_seconds)

    def clear(self, key: str) -> None:
        self.fallback.clear(key)
        if not self.breaker.open:
            try:
                self.primary.clear(key)
            except Exception as exc:
                self.breaker.trip(exc)


class LoginThrottle:
    ADDRESS_FACTOR = 5

    def __init__(self, store: AttemptStore, max_failures: int, window_seconds: int) -> None:
        self.store = store
        self.max_failures = max_failures
        self.window_seconds = window_seconds

    def _limits(self, username: str, address: str | None) -> list[tuple[str, int]]:
        # the account name is hashed: a password typed into the name field stays out of the store
        account = hashlib.sha256(username.strip().casefold().encode()).hexdigest()
        limits = [(f"account:{account}", self.max_failures)]
        if address:
            limits.append((f"address:{address}", self.max_failures * self.ADDRESS_FACTOR))
        return limits

    def refuse_if_locked(self, username: str, address: str | None) -> None:
        waits = []
        for key, limit in self._limits(username, address):
            failures, wait = self.store.count(key)
            if failures >= limit:
                waits.append(wait)
        if waits:
            log.warning("auditor login refused after too many failed attempts (client address %s)", address or "unknown")
            raise TooManyAttempts(max(waits))

    def failed(self, username: str, address: str | None) -> None:
        for key, _ in self._limits(username, address):
            self.store.add(key, self.window_seconds)

    def succeeded(self, username: str) -> None:
        # the address keeps its count: one right password must not reset a guesser's budget
        self.store.clear(self._limits(username, None)[0][0])
