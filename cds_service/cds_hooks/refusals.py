"""Calls refused before any decision (the EHR's token did not verify), counted for operators and auditors.

Counted per hour, claimed issuer and reason code, never the token. A count that cannot be written (the
database down) is logged and dropped: the caller gets its 401 either way."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from cds_service.cds_hooks.tables import RefusedCalls
from cds_service.database import utcnow, width
from cds_service.errors import DATABASE_UNAVAILABLE

log = logging.getLogger(__name__)


class RefusalCounter:
    def __init__(self, engine: Engine, trusted_issuers: Collection[str], clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.trusted = frozenset(trusted_issuers)
        self.clock = clock
        # told each refusal's reason code (the operators' metrics, when enabled)
        self.counted: Callable[[str], None] = lambda reason_code: None
        insert = postgres_insert if engine.dialect.name == "postgresql" else sqlite_insert
        statement = insert(RefusedCalls)
        self._upsert = statement.on_conflict_do_update(
            index_elements=[RefusedCalls.hour, RefusedCalls.issuer, RefusedCalls.reason_code],
            set_={"count": RefusedCalls.count + 1},
        )

    def count(self, claimed_issuer: str | None, reason_code: str) -> None:
        """One refused call: the claimed issuer is kept when the service trusts it ('' otherwise)."""
        self.counted(reason_code)
        hour = self.clock().replace(minute=0, second=0, microsecond=0)
        issuer = claimed_issuer if claimed_issuer in self.trusted else ""
        values = {"hour": hour, "issuer": issuer, "reason_code": reason_code[: width(RefusedCalls.reason_code)], "count": 1}
        try:
            with self.engine.begin() as connection:
                connection.execute(self._upsert, values)
        except DATABASE_UNAVAILABLE as exc:
            log.warning("a refused call was not counted: %s", type(exc).__name__)


def refusal_summary(engine: Engine, start: datetime | None, end: datetime | None) -> list[dict[str, Any]]:
    """Refused calls in [start, end) by issuer and reason code, most first ('' is an issuer not trusted)."""
    total = func.sum(RefusedCalls.count).label("calls")
    query = select(RefusedCalls.issuer, RefusedCalls.reason_code, total, func.max(RefusedCalls.hour).label("last_hour"))
    if start is not None:
        query = query.where(RefusedCalls.hour >= start.replace(minute=0, second=0, microsecond=0))
    if end is not None:
        query = query.where(RefusedCalls.hour < end)
    query = query.group_by(RefusedCalls.issuer, RefusedCalls.reason_code).order_by(total.desc(), RefusedCalls.reason_code)
    with engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    for row in rows:  # SQLite hands max() of a time back as text
        last = row["last_hour"]
        row["last_hour"] = last.isoformat() if isinstance(last, datetime) else str(last)
    return rows
