"""HTTP endpoints: thin, each calling one pipeline."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import markdown
from flask import Blueprint, Response, jsonify, request
from sqlalchemy import text
from werkzeug.exceptions import RequestEntityTooLarge

from cds_service.cds_hooks.auth import Caller
from cds_service.components import components
from cds_service.errors import ApiError, Unauthorized

bp = Blueprint("cds", __name__)
auth_log = logging.getLogger("cds_service.cds_hooks.auth")


def _base_url() -> str:
    configured = components().settings.public_base_url
    return configured or request.host_url.rstrip("/")


def _authenticate() -> Caller:
    audience = _base_url() + request.path
    try:
        return components().authenticator.verify(request.headers.get("Authorization"), audience)
    except Unauthorized as exc:
        # the reason only: never the token
        auth_log.info("refused %s %s: %s; %s", request.method, request.path, exc.reason_code, exc.reason)
        components().refusals.count(exc.claimed_issuer, exc.reason_code)
        raise


def _json_body() -> bytes:
    mimetype = request.mimetype or ""
    if not (mimetype == "application/json" or mimetype.endswith("+json")):
        raise ApiError(415, "unsupported_media_type", "Send the request as application/json.")
    try:
        return request.get_data(cache=False)
    except RequestEntityTooLarge:
        limit = components().settings.max_body_bytes
        raise ApiError(413, "body_too_large", f"The request body is larger than {limit} bytes.") from None


@bp.after_app_request
def _cors(response: Response) -> Response:
    if not request.path.startswith("/cds-services"):
        return response  # only the EHR-facing endpoints are called cross-origin
    origins = components().settings.cors_origins
    origin = request.headers.get("Origin")
    if "*" in origins:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Max-Age"] = "600"
    return response


@bp.route("/cds-services", methods=["OPTIONS"])
@bp.route("/cds-services/<path:_rest>", methods=["OPTIONS"])
def preflight(_rest: str | None = None) -> Response:
    return Response(status=204)


@bp.get("/cds-services")
def discovery() -> Response:
    _authenticate()
    return jsonify({"services": components().hooks.catalog.discovery()})


@bp.post("/cds-services/<service_id>", provide_automatic_options=False)
def call_service(service_id: str) -> Response:
    caller = _authenticate()
    # the pipeline reads the body itself, so a refused one (413, 415) is logged like any failed call
    return jsonify(components().hooks.handle(service_id, _json_body, caller, _base_url()))


@bp.post("/cds-services/<service_id>/feedback", provide_automatic_options=False)
def feedback(service_id: str) -> Response:
    caller = _authenticate()
    return jsonify(components().feedback.handle(service_id, _json_body(), caller))


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    parts = components()
    checks: dict[str, str] = {}
    try:
        with parts.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready
        checks["database"] = f"unavailable ({type(exc).__name__})"
    if parts.redis is not None:
        try:
            parts.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unavailable ({type(exc).__name__})"
    # without its database the service cannot log, so it cannot answer; without Redis it answers (the jti
    # memory and login limits fall back), so it stays in the load balancer, marked degraded
    if checks["database"] != "ok":
        return jsonify({"status": "not ready", "checks": checks}), 503
    degraded = checks.get("redis", "ok") != "ok"
    return jsonify({"status": "degraded" if degraded else "ready", "checks": checks}), 200


@bp.get("/model")
def model_page() -> Response:
    model = components().model
    try:
        source = model_doc().read_text(encoding="utf-8")
    except OSError:
        raise ApiError(404, "not_found", "The model documentation is not installed with this copy.") from None
    body = markdown.markdown(source, extensions=["tables", "toc"])
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{model.title}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem;vertical-align:top}</style>"
        f"</head><body><p><small>Model {model.id} {model.version}, {model.hash}</small></p>{body}</body></html>"
    )
    return Response(page, mimetype="text/html")


@bp.get("/model.json")
def model_identity() -> Response:
    model = components().model
    document = model.document
    return jsonify(
        {
            **model.identity(),
            "title": model.title,
            "released": document.get("released"),
            "revised": document.get("revised"),
            "developer": document.get("developer"),
            "funding": document.get("funding"),
            "intended_use": document.get("intended_use"),
            # HTI-1 source attributes: users, population, validation, and every data element with whether it is used
            **dict(document.get("source_attributes") or {}),
            "citations": model.citations,
            "changelog": model.changelog,
        }
    )


def model_doc() -> Path:
    """docs/model.md in a source checkout, or where an installed wheel puts it."""
    checkout = Path(__file__).resolve().parents[2] / "docs" / "model.md"
    installed = Path(sys.prefix) / "share" / "spine-cds" / "model.md"
    return checkout if checkout.exists() else installed
