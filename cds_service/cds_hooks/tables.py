"""The replay memory of accepted EHR tokens, and the count of refused ones."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cds_service.database import Base


class SeenToken(Base):
    """An accepted EHR JWT, remembered until it expires so it is accepted once (the replay memory
    without Redis, shared by every process on the database). Keyed by SHA-256 of `issuer|jti`, never the token."""

    __tablename__ = "seen_tokens"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    # seconds since the epoch; expired rows may be reused by the same jti and are deleted now and then
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class RefusedCalls(Base):
    """Calls whose token was refused, counted per hour, claimed issuer and reason code (never the token).

    The issuer is kept only when the service trusts it ('' otherwise): anyone can claim any issuer, and a
    name per forged token would let a caller grow this table at will."""

    __tablename__ = "refused_calls"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(500), primary_key=True)
    reason_code: Mapped[str] = mapped_column(String(60), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
