"""Server-rendered auditor pages under /audit: login, dashboard, searchable table, decision detail."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("audit_pages", __name__, url_prefix="/audit", template_folder="templates", static_folder="static")
