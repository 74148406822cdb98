"""The auditor JSON API under /audit/api (described by /audit/api/openapi.json).

Read-only. Every endpoint but the description needs an auditor: a session cookie or an account's
HTTP Basic credentials (an EHR's Bearer JWT never opens it). Every search, view, statistics request
and export is written to the access log with its filters; a patient appears there, as in every
answer, only as its pseudonym.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request, stream_with_context

from cds_service.auditor import openapi
from cds_service.auditor.accounts import Auditor, auditor_required
from cds_service.components import components
from cds_service.decision_log import export
from cds_service.decision_log.access import AccessFilters, access_ndjson, list_access
from cds_service.decision_log.governance import csv_lines, governance
from cds_service.decision_log.queries import DecisionFilters, get_decision, list_decisions, page_args, stats
from cds_service.decision_log.tables import MAX_ID
from cds_service.decision_log.transparency import NotAnchored, checkpoints, consistency, prove_entry, prove_feedback
from cds_service.errors import ApiError

bp = Blueprint("audit_api", __name__, url_prefix="/audit/api")
auditor_only = auditor_required(api=True)


@bp.after_request
def _no_store(response: Response) -> Response:
    # answers name clinicians and pseudonymous patients: no shared or browser cache keeps them
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _filters() -> DecisionFilters:
    return DecisionFilters.from_args(request.args, components().decision_log.pseudonym)


def _record(auditor: Auditor, action: str, details: dict[str, Any]) -> None:
    components().decision_log.record_access(auditor.username, action, details)


@bp.errorhandler(NotAnchored)
def _not_anchored(error: NotAnchored) -> Response:
    """No such entry in the log, or none under a signed checkpoint yet: one 404 for every proof route."""
    return ApiError(404, "not_anchored", f"{error}.").to_response()


def _check_id(row_id: int, what: str = "decision") -> None:
    if not 1 <= row_id <= MAX_ID:
        raise ApiError(404, "not_found", f"No such {what}: ids run from 1 to 2147483647.")


def _page_url(page: int) -> str:
    base = components().settings.public_base_url or request.host_url.rstrip("/")
    args = request.args.to_dict()
    args["page"] = str(page)
    return f"{base.rstrip('/')}{request.path}?{urlencode(args)}"


@bp.get("/decisions")
@auditor_only
def decisions(auditor: Auditor) -> Response:
    filters = _filters()
    sort, page, per_page = page_args(request.args)
    _record(auditor, "api.search", {**filters.to_log(), "sort": sort, "page": page, "per_page": per_page})
    found = list_decisions(components().engine, filters, sort=sort, page=page, per_page=per_page)
    body: dict[str, Any] = {"items": found.items, "total": found.total, "page": found.page, "per_page": found.per_page}
    links: list[str] = []
    if page * per_page < found.total:
        body["next"] = _page_url(page + 1)
        links.append(f'<{body["next"]}>; rel="next"')
    if page > 1:
        # past the end, "prev" leads back to the last page that has decisions
        body["prev"] = _page_url(min(page - 1, max(1, math.ceil(found.total / per_page))))
        links.append(f'<{body["prev"]}>; rel="prev"')
    response = jsonify(body)
    if links:
        response.headers["Link"] = ", ".join(links)
    return response


@bp.get("/decisions/<int:decision_id>")
@auditor_only
def decision(decision_id: int, auditor: Auditor) -> Response:
    _check_id(decision_id)
    _record(auditor, "api.view", {"id": decision_id})
    found = get_decision(components().engine, decision_id)
    if found is None:
        raise ApiError(404, "not_found", f"No decision {decision_id}.")
    return jsonify(found)


@bp.get("/stats")
@auditor_only
def decision_stats(auditor: Auditor) -> Response:
    filters = _filters()
    _record(auditor, "api.stats", filters.to_log())
    return jsonify(stats(components().engine, filters))


def _download(lines: Any, mimetype: str, filename: str) -> Response:
    response = Response(stream_with_context(lines), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@bp.get("/export.ndjson")
@auditor_only
def export_ndjson(auditor: Auditor) -> Response:
    filters = _filters()
    _record(auditor, "api.export.ndjson", filters.to_log())
    parts = components()
    lines = export.ndjson_lines(parts.engine, filters, parts.decision_log.pseudonym)
    return _download(lines, "application/fhir+ndjson", "decisions.ndjson")


@bp.get("/export.csv")
@auditor_only
def export_csv(auditor: Auditor) -> Response:
    filters = _filters()
    _record(auditor, "api.export.csv", filters.to_log())
    return _download(export.csv_lines(components().engine, filters), "text/csv", "decisions.csv")


def _access_filters() -> AccessFilters:
    return AccessFilters.from_args(request.args, components().decision_log.pseudonym)


@bp.get("/access")
@auditor_only
def access(auditor: Auditor) -> Response:
    """Who searched, opened or exported what (the access log), newest first."""
    filters = _access_filters()
    _, page, per_page = page_args({k: v for k, v in request.args.items() if k in ("page", "per_page")})
    _record(auditor, "api.access.search", {**filters.to_log(), "page": page, "per_page": per_page})
    found = list_access(components().engine, filters, page=page, per_page=per_page)
    body: dict[str, Any] = {"items": found.items, "total": found.total, "page": found.page, "per_page": found.per_page}
    if page * per_page < found.total:
        body["next"] = _page_url(page + 1)
    return jsonify(body)


@bp.get("/access/export.ndjson")
@auditor_only
def access_export(auditor: Auditor) -> Response:
    filters = _access_filters()
    _record(auditor, "api.access.export", filters.to_log())
    return _download(access_ndjson(components().engine, filters), "application/fhir+ndjson", "access-log.ndjson")


@bp.get("/decisions/<int:decision_id>/proof")
@auditor_only
def decision_proof(decision_id: int, auditor: Auditor) -> Response:
    """The decision's inclusion proof under the newest signed checkpoint (C2SP tlog-proof)."""
    _check_id(decision_id)
    _record(auditor, "api.proof", {"decision_id": decision_id})
    text = prove_entry(components().engine, "decision", decision_id)
    return Response(text, mimetype="text/plain")


@bp.get("/decisions/<int:decision_id>/feedback/<int:feedback_id>/proof")
@auditor_only
def feedback_proof(decision_id: int, feedback_id: int, auditor: Auditor) -> Response:
    """The inclusion proof of one feedback item on this decision (C2SP tlog-proof)."""
    _check_id(decision_id)
    _check_id(feedback_id, "feedback item")
    _record(auditor, "api.proof", {"decision_id": decision_id, "feedback_id": feedback_id})
    text = prove_feedback(components().engine, decision_id, feedback_id)
    return Response(text, mimetype="text/plain")


@bp.get("/checkpoints")
@auditor_only
def signed_checkpoints(auditor: Auditor) -> Response:
    """The signed checkpoints of the Merkle tree, newest first, with the log's verifier key."""
    _record(auditor, "api.checkpoints", {})
    parts = components()
    return jsonify({"verifier_key": parts.runtime.checkpoint_signer.verifier_key, "items": checkpoints(parts.engine)})


@bp.get("/consistency")
@auditor_only
def consistency_proof(auditor: Auditor) -> Response:
    """The consistency proof from the checkpoint of `from` entries to the newest, with both signed notes."""
    raw = request.args.get("from", "")
    if set(request.args) - {"from"} or not raw.isdigit() or not 1 <= int(raw) <= MAX_ID:
        raise ApiError(400, "invalid_filter", "'from' (a signed checkpoint's tree size) is the only parameter.")
    _record(auditor, "api.consistency", {"from": int(raw)})
    return jsonify(consistency(components().engine, int(raw)))


@bp.get("/governance")
@auditor_only
def governance_report(auditor: Auditor) -> Response:
    """Alert governance per site, hook and model version over the chosen period."""
    filters = _filters()
    _record(auditor, "api.governance", filters.to_log())
    parts = components()
    return jsonify(governance(parts.engine, filters, parts.settings.governance_warning_share))


@bp.get("/governance.csv")
@auditor_only
def governance_csv(auditor: Auditor) -> Response:
    filters = _filters()
    _record(auditor, "api.governance.csv", filters.to_log())
    parts = components()
    report = governance(parts.engine, filters, parts.settings.governance_warning_share)
    return _download(csv_lines(report), "text/csv", "alert-governance.csv")


@bp.get("/openapi.json")
def openapi_document() -> Response:
    return jsonify(openapi.document())
