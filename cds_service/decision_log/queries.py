"""What auditors ask of the decision log: filtered lists, one decision in full, statistics.

Shared by the JSON API and the pages, so both answer the same question the same way. A patient is
searched by the pseudonym the server computes from the id the auditor enters; raw ids never reach
the database or the access log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.engine import Engine

from cds_service.decision_log.tables import MAX_ID, Decision, Feedback, Verification
from cds_service.errors import ApiError

SORTABLE = {"created_at", "service_id", "hook", "band", "outcome", "reason", "latency_ms", "user_id", "tenant", "id"}
SUMMARY_COLUMNS = (
    "id",
    "created_at",
    "service_id",
    "hook",
    "hook_instance",
    "issuer",
    "tenant",
    "user_id",
    "patient_pseudonym",
    "band",
    "outcome",
    "reason",
    "status_code",
    "latency_ms",
    "model_version",
)
MAX_PER_PAGE = 500
# pages and filters are bounded so no value reaches the database that it cannot compare (MAX_ID: ids are
# a 32-bit column on PostgreSQL)
MAX_PAGE = 1_000_000
MAX_FILTER_LENGTH = 500
SelectT = TypeVar("SelectT", bound=Select[*tuple[Any, ...]])


def day_or_time(value: str, name: str, *, end: bool) -> datetime:
    """A `from`/`to` parameter: a whole day (YYYY-MM-DD, `to` inclusive) or an ISO 8601 instant, in UTC."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime.combine(day + timedelta(days=1) if end else day, time(), UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "invalid_filter", f"'{name}' must be a date (YYYY-MM-DD) or an ISO 8601 date-time.") from None
    # in UTC: SQLite keeps times as UTC text without an offset, so an offset would be compared as if it were UTC
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def filter_text(args: Mapping[str, str], name: str) -> str | None:
    """A text query parameter, stripped; None when empty. Bounded and free of control characters."""
    value = (args.get(name) or "").strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or len(value) > MAX_FILTER_LENGTH:
        raise ApiError(400, "invalid_filter", f"'{name}' must be at most {MAX_FILTER_LENGTH} characters without control characters.")
    return value or None


@dataclass(frozen=True)
class DecisionFilters:
    start: datetime | None = None
    end: datetime | None = None  # exclusive
    service: str | None = None
    hook: str | None = None
    band: str | None = None
    outcome: str | None = None
    reason: str | None = None
    user: str | None = None
    tenant: str | None = None
    patient_pseudonym: str | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str], pseudonym: Callable[[str], str | None]) -> DecisionFilters:
        """From query parameters: from, to (dates are whole days), service, hook, band, outcome, reason, user, tenant,
        patient."""
        known = {"from", "to", "service", "hook", "band", "outcome", "reason", "user", "tenant", "patient", "sort", "page", "per_page"}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ApiError(400, "invalid_filter", f"Unknown parameter(s): {', '.join(unknown)}.")

        def text(name: str) -> str | None:
            return filter_text(args, name)

        start = day_or_time(args["from"], "from", end=False) if text("from") else None
        end = day_or_time(args["to"], "to", end=True) if text("to") else None
        patient = text("patient")
        return cls(
            start=start,
            end=end,
            service=text("service"),
            hook=text("hook"),
            band=text("band"),
            outcome=text("outcome"),
            reason=text("reason"),
            user=text("user"),
            tenant=text("tenant"),
            patient_pseudonym=pseudonym(patient) if patient else None,
        )

    def apply(self, query: SelectT) -> SelectT:
        conditions = []
        if self.start:
            conditions.append(Decision.created_at >= self.start)
        if self.end:
            conditions.append(Decision.created_at < self.end)
        for column, value in (
            (Decision.service_id, self.service),
            (Decision.hook, self.hook),
            (Decision.band, self.band),
            (Decision.outcome, self.outcome),
            (Decision.reason, self.reason),
            (Decision.user_id, self.user),
            (Decision.tenant, self.tenant),
            (Decision.patient_pseudonym, self.patient_pseudonym),
        ):
            if value is not None:
                conditions.append(column == value)
        return query.where(*conditions) if conditions else query

    def to_log(self) -> dict[str, Any]:
        """The filters as the access log keeps them: the patient only as its pseudonym."""
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items() if v is not None}


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    return value


def _summary(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {c: _iso(row[c]) for c in SUMMARY_COLUMNS}


def _full(row: Mapping[Any, Any], model: type[Any]) -> dict[str, Any]:
    return {c.key: _iso(row[c.key]) for c in model.__table__.columns}


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    total: int
    page: int
    per_page: int


def page_args(args: Mapping[str, str]) -> tuple[str, int, int]:
    sort = args.get("sort") or "-created_at"
    if sort.lstrip("-") not in SORTABLE:
        raise ApiError(400, "invalid_sort", f"'sort' must be one of {', '.join(sorted(SORTABLE))}, optionally prefixed with '-'.")
    try:
        page = int(args.get("page") or 1)
        per_page = int(args.get("per_page") or 50)
    except ValueError:
        raise ApiError(400, "invalid_page", "'page' and 'per_page' must be whole numbers.") from None
    if not 1 <= page <= MAX_PAGE or not 1 <= per_page <= MAX_PER_PAGE:
        raise ApiError(400, "invalid_page", f"'page' is between 1 and {MAX_PAGE}; 'per_page' is between 1 and {MAX_PER_PAGE}.")
    return sort, page, per_page


def list_decisions(
    engine: Engine, filters: DecisionFilters, *, sort: str = "-created_at", page: int = 1, per_page: int = 50
) -> Page:
    column = getattr(Decision, sort.lstrip("-"))
    order = column.desc() if sort.startswith("-") else column.asc()
    query = filters.apply(select(*(getattr(Decision, c) for c in SUMMARY_COLUMNS)))
    with engine.connect() as connection:
        total = connection.execute(filters.apply(select(func.count(Decision.id)))).scalar_one()
        rows = connection.execute(query.order_by(order, Decision.id.desc()).limit(per_page).offset((page - 1) * per_page))
        items = [_summary(row._mapping) for row in rows]
    return Page(items, int(total), page, per_page)


def iter_decisions(engine: Engine, filters: DecisionFilters, batch: int = 1000) -> Any:
    """Every matching decision in full, oldest first, read in batches (for exports)."""
    last = 0
    while True:
        with engine.connect() as connection:
            rows = connection.execute(
                filters.apply(select(Decision)).where(Decision.id > last).order_by(Decision.id).limit(batch)
            ).all()
        if not rows:
            return
        for row in rows:
            yield _full(row._mapping, Decision)
        last = rows[-1].id


def feedback_for(engine: Engine, decision_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = {i: [] for i in decision_ids}
    if not decision_ids:
        return found
    with engine.connect() as connection:
        rows = connection.execute(select(Feedback).where(Feedback.decision_id.in_(decision_ids)).order_by(Feedback.id)).all()
    for row in rows:
        found[row.decision_id].append(_full(row._mapping, Feedback))
    return found


def get_decision(engine: Engine, decision_id: int) -> dict[str, Any] | None:
    """One decision in full: every column (cards exactly as shown, findings, model) and its feedback."""
    if not 1 <= decision_id <= MAX_ID:  # beyond the column's range there is no such decision to look up
        return None
    with engine.connect() as connection:
        row = connection.execute(select(Decision).where(Decision.id == decision_id)).first()
    if row is None:
        return None
    decision = _full(row._mapping, Decision)
    decision["feedback"] = feedback_for(engine, [decision_id])[decision_id]
    return decision


def _percentile(ordered: list[float], share: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))
    return round(ordered[index], 2)


def stats(engine: Engine, filters: DecisionFilters) -> dict[str, Any]:
    """Cards shown, acceptance and override rates, override reasons, bands, latency, per day."""
    with engine.connect() as connection:
        decisions = connection.execute(
            filters.apply(
                select(
                    Decision.id, Decision.created_at, Decision.band, Decision.outcome, Decision.latency_ms, Decision.card_uuids
                )
            )
        ).all()
        ids = [d.id for d in decisions]
        feedback = connection.execute(select(Feedback.decision_id, Feedback.outcome, Feedback.override_code)).all() if ids else []
    wanted = set(ids)
    feedback = [f for f in feedback if f.decision_id in wanted]
    cards_shown = sum(len(d.card_uuids or []) for d in decisions)
    accepted = sum(1 for f in feedback if f.outcome == "accepted")
    overridden = sum(1 for f in feedback if f.outcome == "overridden")
    per_day: dict[str, dict[str, int]] = {}
    day_of = {d.id: _iso(d.created_at)[:10] for d in decisions}
    for d in decisions:
        day = per_day.setdefault(day_of[d.id], {"decisions": 0, "cards": 0, "accepted": 0, "overridden": 0})
        day["decisions"] += 1
        day["cards"] += len(d.card_uuids or [])
    for f in feedback:
        per_day[day_of[f.decision_id]][f.outcome] += 1
    latencies = sorted(float(d.latency_ms) for d in decisions if d.latency_ms is not None)
    return {
        "decisions": len(decisions),
        "cards_shown": cards_shown,
        "accepted": accepted,
        "overridden": overridden,
        "acceptance_rate": round(accepted / cards_shown, 4) if cards_shown else None,
        "override_rate": round(overridden / cards_shown, 4) if cards_shown else None,
        "override_reasons": dict(Counter(f.override_code or "unspecified" for f in feedback if f.outcome == "overridden")),
        "bands": dict(Counter(d.band or "not assessed" for d in decisions)),
        "outcomes": dict(Counter(d.outcome for d in decisions)),
        "latency_ms": {
            "p50": _percentile(latencies, 0.5),
            "p90": _percentile(latencies, 0.9),
            "p99": _percentile(latencies, 0.99),
        },
        "per_day": [{"date": day, **counts} for day, counts in sorted(per_day.items())],
    }


def latest_verification(engine: Engine) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(select(Verification).order_by(Verification.id.desc()).limit(1)).first()
    if row is None:
        return None
    return _full(row._mapping, Verification)
