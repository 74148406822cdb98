"""Leaning on a fallback while a shared dependency (Redis) is unreachable, and trying it again later."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Breaker:
    """After a failure of the primary, the fallback is used for `retry_after` seconds, so an outage costs
    one connect timeout, not one per call; then the primary is tried again."""

    def __init__(self, what: str, retry_after: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.retry_after = retry_after
        self._clock = clock
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        """Whether the primary is being left alone."""
        return self._clock() < self._open_until

    def trip(self, error: Exception) -> None:
        log.warning(
            "Redis unreachable for %s (%s); using the fallback for %.0f s", self.what, type(error).__name__, self.retry_after
        )
        self._open_until = self._clock() + self.retry_after
