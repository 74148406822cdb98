"""Snoozing as a display rule: which feedback silences the cards, and for how long."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hooks.snooze import PastFeedback, SnoozeRule

SYSTEM = "urn:example:override-reasons"
RULE = SnoozeRule(system=SYSTEM, reasons=(("already-evaluated", 90), ("knee-cause-confirmed", 365)), other_days=30, accepted_days=180)
NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)


def feedback(outcome: str, code: str | None = None, system: str | None = SYSTEM, days_ago: float = 1) -> PastFeedback:
    return PastFeedback(outcome, system if code else None, code, NOW - timedelta(days=days_ago))


@pytest.mark.parametrize(
    ("item", "days"),
    [
        (feedback("overridden", "already-evaluated"), 90),
        (feedback("overridden", "knee-cause-confirmed"), 365),
        (feedback("overridden", "knee-cause-confirmed", system=None), 365),  # a known code sent without its system
        (feedback("overridden", "knee-cause-confirmed", system="urn:other"), 30),  # another system's code
        (feedback("overridden", "something-else"), 30),
        (feedback("overridden"), 30),  # no reason given
        (feedback("accepted"), 180),
        (feedback("ignored"), 0),
    ],
)
def test_each_kind_of_feedback_silences_for_its_own_days(item: PastFeedback, days: int) -> None:
    assert RULE.days_for(item) == days


def test_feedback_silences_until_its_days_have_passed() -> None:
    assert RULE.snoozed([feedback("overridden", "already-evaluated", days_ago=89.9)], NOW)
    assert RULE.snoozed([feedback("overridden", "already-evaluated", days_ago=90)], NOW)  # the boundary is inclusive
    assert not RULE.snoozed([feedback("overridden", "already-evaluated", days_ago=90.1)], NOW)
    assert RULE.snoozed([feedback("overridden", "already-evaluated", days_ago=200), feedback("accepted", days_ago=10)], NOW)
    assert not RULE.snoozed([], NOW)


def test_a_rule_of_zero_days_silences_nothing() -> None:
    never = SnoozeRule(system=SYSTEM, reasons=(("already-evaluated", 0),), other_days=0, accepted_days=0)
    assert not never.silences
    assert not never.snoozed([feedback("overridden", "already-evaluated", days_ago=0)], NOW)
    assert RULE.silences and RULE.longest_days == 365
