"""The auditor JSON API under /audit/api (described by /audit/api/openapi.json)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("audit_api", __name__, url_prefix="/audit/api")
