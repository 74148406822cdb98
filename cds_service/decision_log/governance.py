"""Alert governance for a CDS committee: how often the card fires and what clinicians do with it.

Per site (issuer and tenant), hook and model version over a period: calls, eligible calls (answered and
assessed: a band), cards and cards per 100 eligible calls, feedback accepted and overridden (each also per
100 cards; overrides by reason and by HL7 non-adherence category), snoozed calls, and the same per ISO week
as the trend. A group whose cards fire on more than the warning share of its eligible calls is flagged."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from cds_service.decision_log.queries import DecisionFilters
from cds_service.decision_log.tables import Decision, Feedback
from cds_service.spreadsheet import safe_cell
from hooks.cards import NON_ADHERENCE_CATEGORY, OVERRIDE_SYSTEM

GroupKey = tuple[str, str, str, str]  # issuer, tenant, hook, model version
UNMAPPED = "unmapped"


@dataclass
class _Counts:
    calls: int = 0
    eligible: int = 0
    cards: int = 0
    snoozed: int = 0

    def add(self, row: Any) -> None:
        self.calls += 1
        if row.status_code == 200 and row.band is not None:
            self.eligible += 1
        self.cards += row.outcome == "cards"
        self.snoozed += row.outcome == "snoozed"

    def per_100(self) -> float | None:
        return _per_100(self.cards, self.eligible)


def _per_100(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


@dataclass
class _Group:
    counts: _Counts = field(default_factory=_Counts)
    weeks: dict[date, _Counts] = field(default_factory=dict)
    accepted: int = 0
    overridden: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)


def _week(moment: datetime) -> date:
    day = moment.date()
    return day - timedelta(days=day.weekday())  # the Monday of its ISO week


def _key(row: Any) -> GroupKey:
    return (row.issuer or "", row.tenant or "", row.hook or "", row.model_version or "")


def governance(engine: Engine, filters: DecisionFilters, warning_share: float) -> dict[str, Any]:
    """The committee's figures for the decisions `filters` selects, grouped by site, hook and model version."""
    groups: dict[GroupKey, _Group] = {}
    columns = (Decision.issuer, Decision.tenant, Decision.hook, Decision.model_version, Decision.status_code, Decision.band)
    with engine.connect() as connection:
        rows = connection.execution_options(yield_per=5000).execute(
            filters.apply(select(*columns, Decision.outcome, Decision.created_at))
        )
        for row in rows:
            group = groups.setdefault(_key(row), _Group())
            group.counts.add(row)
            created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
            group.weeks.setdefault(_week(created), _Counts()).add(row)
        feedback = connection.execute(
            filters.apply(
                select(*columns[:4], Feedback.outcome, Feedback.override_system, Feedback.override_code).join(
                    Decision, Feedback.decision_id == Decision.id
                )
            )
        )
        for item in feedback:
            group = groups.setdefault(_key(item), _Group())
            if item.outcome == "accepted":
                group.accepted += 1
                continue
            ours = item.override_system in (OVERRIDE_SYSTEM, None)
            code = item.override_code or "(no reason)"
            group.overridden[code if ours or not item.override_code else f"{item.override_system}|{code}"] += 1
            group.categories[NON_ADHERENCE_CATEGORY.get(code, UNMAPPED) if ours else UNMAPPED] += 1
    out = []
    for (issuer, tenant, hook, version), group in sorted(groups.items(), key=lambda kv: (-kv[1].counts.calls, kv[0])):
        counts = group.counts
        share = counts.cards / counts.eligible if counts.eligible else 0.0
        overridden = sum(group.overridden.values())
        out.append(
            {
                "issuer": issuer,
                "tenant": tenant,
                "hook": hook,
                "model_version": version,
                "calls": counts.calls,
                "eligible": counts.eligible,
                "cards": counts.cards,
                "cards_per_100_eligible": counts.per_100(),
                "accepted": group.accepted,
                "accepted_per_100_cards": _per_100(group.accepted, counts.cards),
                "overridden": overridden,
                "overridden_per_100_cards": _per_100(overridden, counts.cards),
                "overridden_by_reason": dict(sorted(group.overridden.items())),
                "overridden_by_category": dict(sorted(group.categories.items())),
                "snoozed": counts.snoozed,
                "warning": share > warning_share,
                "trend": [
                    {"week": week.isoformat(), "eligible": c.eligible, "cards": c.cards, "cards_per_100_eligible": c.per_100()}
                    for week, c in sorted(group.weeks.items())
                ],
            }
        )
    return {"warning_share": warning_share, "groups": out}


CSV_COLUMNS = (
    "issuer",
    "tenant",
    "hook",
    "model_version",
    "calls",
    "eligible",
    "cards",
    "cards_per_100_eligible",
    "accepted",
    "accepted_per_100_cards",
    "overridden",
    "overridden_per_100_cards",
    "overridden_by_reason",
    "overridden_by_category",
    "snoozed",
    "warning",
)


def csv_lines(report: dict[str, Any]) -> Iterator[str]:
    """The report as CSV, one row per group (reasons and categories as `code=count;...`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for group in report["groups"]:
        cells = []
        for column in CSV_COLUMNS:
            value = group[column]
            if isinstance(value, dict):
                value = ";".join(f"{k}={v}" for k, v in value.items())
            cells.append(safe_cell("" if value is None else value))
        writer.writerow(cells)
    yield buffer.getvalue()
