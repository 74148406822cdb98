"""The replay memory of accepted EHR tokens."""

from __future__ import annotations

from sqlalchemy import (
    Float,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from cds_service.database import Base


class SeenToken(Base):
    """An accepted EHR JWT, remembered until it expires so it is accepted once (the replay memory
    without Redis, shared by every process on the database). Keyed by SHA-256 of `issuer|jti`, never the token."""

    __tablename__ = "seen_tokens"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    # seconds since the epoch; expired rows may be reused by the same jti and are deleted now and then
    expires_at: Mapped[float] = mapped_column(Float, index=True)
