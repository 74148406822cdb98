"""Snoozing: a clinician's feedback on a card silences the same service's cards for that patient for a while.

A display rule, decided from the feedback already given (read by the caller) and the time now; it changes
no assessment, only whether the cards are shown."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class PastFeedback:
    """One feedback item given earlier on the service's cards for the patient, at the same EHR and tenant."""

    outcome: str  # accepted | overridden
    override_system: str | None
    override_code: str | None
    at: datetime  # aware


@dataclass(frozen=True)
class SnoozeRule:
    """How long feedback on a service's card silences that service's cards for the patient at that EHR
    (issuer and tenant), in days, 0 for not at all: an override with one of `reasons` (codes of `system`,
    or sent without a system) for that reason's days; any other override (another code or system, or no
    reason) for `other_days`; taking the card's suggestion (`accepted`) for `accepted_days`."""

    system: str
    reasons: tuple[tuple[str, int], ...]  # (code, days)
    other_days: int
    accepted_days: int

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(code for code, _ in self.reasons)

    @property
    def silences(self) -> bool:
        """Whether any feedback snoozes at all (every duration 0: nothing needs reading)."""
        return self.longest_days > 0

    @property
    def longest_days(self) -> int:
        return max(self.other_days, self.accepted_days, *(d for _, d in self.reasons))

    def days_for(self, item: PastFeedback) -> int:
        if item.outcome == "accepted":
            return self.accepted_days
        if item.outcome != "overridden":
            return 0
        if item.override_system in (self.system, None):
            for code, days in self.reasons:
                if item.override_code == code:
                    return days
        return self.other_days

    def snoozed(self, feedback: Iterable[PastFeedback], now: datetime) -> bool:
        """Whether any of the feedback still silences the cards at `now`."""
        for item in feedback:
            days = self.days_for(item)
            if days > 0 and item.at >= now - timedelta(days=days):
                return True
        return False
