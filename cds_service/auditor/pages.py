"""Server-rendered auditor pages under /audit: login, dashboard, searchable table, decision detail.

Every page but the login form needs an auditor's session (an EHR's Bearer JWT opens nothing here)
and only reads: the one write a page makes is the access-log entry recording who searched or viewed
what, with the patient named only by pseudonym. The pages need no JavaScript; charts are inline SVG
drawn on the server (charts.py).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as etree
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import markdown
from flask import Blueprint, Response, redirect, render_template, request, url_for
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.engine import Engine
from werkzeug.wrappers import Response as BaseResponse

from cds_service.auditor import charts
from cds_service.auditor.accounts import (
    Auditor,
    auditor_required,
    check_credentials,
    check_csrf,
    csrf_token,
    current_auditor,
    log_in,
    log_out,
)
from cds_service.cds_hooks.refusals import refusal_summary
from cds_service.components import components
from cds_service.decision_log.access import AccessFilters, list_access
from cds_service.decision_log.governance import governance
from cds_service.decision_log.queries import (
    SORTABLE,
    DecisionFilters,
    get_decision,
    latest_verification,
    list_decisions,
    page_args,
    stats,
)
from cds_service.decision_log.tables import MAX_ID
from cds_service.decision_log.transparency import (
    NotAnchored,
    checkpoint_note,
    checkpoints,
    consistency_file,
    prove_entry,
    prove_feedback,
)
from cds_service.errors import ApiError, TooManyAttempts
from hooks.services import REASONS, SERVICES

bp = Blueprint("audit_pages", __name__, url_prefix="/audit", template_folder="templates", static_folder="static")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
FILTER_FIELDS = ("from", "to", "service", "hook", "band", "outcome", "reason", "user", "tenant", "patient")
BANDS = ("likely", "possible", "unlikely")
OUTCOMES = ("cards", "no-card", "snoozed")
DASHBOARD_DAYS = 30  # the dashboard's range when the form names none
COLUMNS = (  # (sort key, heading) of the decision table
    ("id", "#"),
    ("created_at", "Time (UTC)"),
    ("service_id", "Service"),
    ("hook", "Hook"),
    ("band", "Band"),
    ("outcome", "Outcome"),
    ("latency_ms", "Latency"),
    ("user_id", "User"),
    ("tenant", "Tenant"),
)
SAFE_SCHEMES = ("http", "https", "mailto")


def _engine() -> Engine:
    return components().engine


login_required = auditor_required(api=False)


@bp.after_request
def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


@bp.errorhandler(ApiError)
def _error_page(error: ApiError) -> tuple[str, int]:
    """Errors under /audit are pages, not JSON (CSRF failures, an unknown decision)."""
    return render_template("audit_error.html", error=error, auditor=_auditor_or_none()), error.status


@bp.errorhandler(NotAnchored)
def _not_anchored_page(error: NotAnchored) -> tuple[str, int]:
    """No such entry in the log, or none under a signed checkpoint yet: one 404 page for every proof download."""
    return _error_page(ApiError(404, "not_anchored", f"{error}."))


@bp.app_template_global()
def audit_csrf_token() -> str:
    return csrf_token()


def _auditor_or_none() -> Auditor | None:
    try:
        return current_auditor(_engine(), components().login_throttle)
    except Exception:  # an error page must render even when the database is what failed
        return None


# -- login and logout ---------------------------------------------------------------------------


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a local path under /audit, never another site."""
    fallback = url_for("audit_pages.dashboard")
    if not target or any(c in target for c in "\\\r\n\t") or not target.startswith("/"):
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return fallback
    if parts.path != "/audit" and not parts.path.startswith("/audit/"):
        return fallback
    if ".." in unquote(parts.path).split("/"):  # /audit/../elsewhere leaves the audit pages
        return fallback
    if parts.path.rstrip("/") in ("/audit/login", "/audit/logout"):
        return fallback
    return target.rstrip("?") if parts.query == "" else target


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        return render_template("audit_login.html", next=request.args.get("next", ""), error=None, username="")
    check_csrf()
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    target = request.form.get("next", "")
    try:
        auditor = check_credentials(_engine(), components().login_throttle, username, password) if username and password else None
    except TooManyAttempts as locked:
        page = render_template("audit_login.html", next=target, error=locked.message, username=username)
        return page, 429, {"Retry-After": str(locked.retry_after)}
    if auditor is None:
        page = render_template("audit_login.html", next=target, error="Wrong username or password.", username=username)
        return page, 401
    log_in(auditor)
    return redirect(safe_next(target))


@bp.post("/logout")
def logout() -> BaseResponse:
    check_csrf()
    log_out()
    return redirect(url_for("audit_pages.login"))


# -- dashboard ----------------------------------------------------------------------------------


def _args() -> dict[str, str]:
    """The query string, one value per name (the first)."""
    return request.args.to_dict(flat=True)


def _filters(args: Mapping[str, str]) -> DecisionFilters:
    return DecisionFilters.from_args(args, components().decision_log.pseudonym)


def _percent(part: float, whole: float) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def _days(per_day: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-day statistics with the quiet days in between filled in as zeros."""
    if not per_day:
        return []
    by_day = {row["date"]: row for row in per_day}
    first, last = date.fromisoformat(per_day[0]["date"]), date.fromisoformat(per_day[-1]["date"])
    if (last - first).days > 400:
        return per_day
    empty = {"decisions": 0, "cards": 0, "accepted": 0, "overridden": 0}
    days = (first + timedelta(days=n) for n in range((last - first).days + 1))
    return [by_day.get(d.isoformat(), {"date": d.isoformat(), **empty}) for d in days]


def _ordered(counts: Mapping[str, int], first: tuple[str, ...]) -> list[tuple[str, float]]:
    known = [(k, float(counts[k])) for k in first if k in counts]
    rest = sorted(((k, float(v)) for k, v in counts.items() if k not in first), key=lambda kv: (-kv[1], kv[0]))
    return known + rest


def _short_day(day: str) -> str:
    return day[5:] if len(day) == 10 else day


def dashboard_charts(summary: Mapping[str, Any]) -> dict[str, Markup]:
    days = _days(summary["per_day"])
    labels = [d["date"] for d in days]
    latency = summary["latency_ms"]
    return {
        "cards": charts.bar_chart("Cards shown per day", [(d["date"], float(d["cards"])) for d in days], tick_format=_short_day),
        "rates": charts.line_chart(
            "Accept and override rates per day (share of cards shown)",
            labels,
            [
                charts.Series("accepted", [_percent(d["accepted"], d["cards"]) for d in days], charts.PALETTE[2]),
                charts.Series("overridden", [_percent(d["overridden"], d["cards"]) for d in days], charts.PALETTE[1]),
            ],
            unit="%",
            y_max=100,
            tick_format=_short_day,
        ),
        "reasons": charts.bar_chart(
            "Override reasons", _ordered(summary["override_reasons"], ()), horizontal=True, color=charts.PALETTE[1]
        ),
        "bands": charts.bar_chart(
            "Decisions by band", _ordered(summary["bands"], (*BANDS, "not assessed")), horizontal=True, color=charts.PALETTE[3]
        ),
        "outcomes": charts.bar_chart(
            "Decisions by outcome", _ordered(summary["outcomes"], OUTCOMES), horizontal=True, color=charts.PALETTE[5]
        ),
        "latency": charts.bar_chart(
            "Latency percentiles",
            [(name, float(latency[name])) for name in ("p50", "p90", "p99") if latency.get(name) is not None],
            unit="ms",
            whole=False,
            width=360,
        ),
    }


@bp.get("/")
@login_required
def dashboard(auditor: Auditor) -> Any:
    args = _args()
    if not any(args.get(name) is not None for name in FILTER_FIELDS):
        args["from"] = (datetime.now(UTC).date() - timedelta(days=DASHBOARD_DAYS - 1)).isoformat()
    try:
        filters = _filters(args)
    except ApiError as exc:
        refused = render_template("audit_dashboard.html", **_form(args), auditor=auditor, problem=exc.message, summary=None)
        return refused, 400
    summary = stats(_engine(), filters)
    components().decision_log.record_access(auditor.username, "page.dashboard", filters.to_log())
    return render_template(
        "audit_dashboard.html",
        **_form(args),
        auditor=auditor,
        problem=None,
        summary=summary,
        charts=dashboard_charts(summary),
        verification=latest_verification(_engine()),
        refused=refusal_summary(_engine(), filters.start, filters.end),
        days=_days(summary["per_day"]),
        table_url=_query({k: v for k, v in args.items() if k in FILTER_FIELDS}),
    )


# -- the decision table ---------------------------------------------------------------------------


def _form(args: Mapping[str, str]) -> dict[str, Any]:
    """What the filter form needs: the values entered and the choices offered."""
    return {
        "values": {name: args.get(name, "") for name in (*FILTER_FIELDS, "sort", "per_page")},
        "services": [s.id for s in SERVICES],
        "hooks": sorted({s.hook for s in SERVICES}),
        "bands": BANDS,
        "outcomes": OUTCOMES,
        "reasons": (*REASONS, "snoozed"),
    }


def explain(reason: str | None) -> str | None:
    """What a decision's reason code means, in a sentence."""
    if reason is None:
        return None
    if reason in REASONS:
        return REASONS[reason]
    if reason == "snoozed":
        return "Earlier feedback on this service's cards for the patient silences them for now: the clinician's decision stands."
    return f"The call failed ({reason}) and was not assessed."


def _query(args: Mapping[str, str], endpoint: str = "audit_pages.decisions", **changes: str | int | None) -> str:
    """A table's URL with these filters, empty values left out, and `changes` applied."""
    merged: dict[str, Any] = {k: v for k, v in args.items() if v not in ("", None)}
    for key, value in changes.items():
        if value in ("", None):
            merged.pop(key, None)
        else:
            merged[key] = value
    return url_for(endpoint, **merged)


@bp.get("/decisions")
@login_required
def decisions(auditor: Auditor) -> Any:
    args = _args()
    try:
        filters = _filters(args)
        sort, page_number, per_page = page_args(args)
    except ApiError as exc:
        refused = render_template("audit_decisions.html", **_form(args), auditor=auditor, problem=exc.message, page=None)
        return refused, 400
    page = list_decisions(_engine(), filters, sort=sort, page=page_number, per_page=per_page)
    components().decision_log.record_access(
        auditor.username, "page.search", {**filters.to_log(), "sort": sort, "page": page_number, "per_page": per_page}
    )
    pages = max(1, -(-page.total // per_page))
    headings = []
    for key, heading in COLUMNS:
        active = sort.lstrip("-") == key
        descending = sort.startswith("-")
        # a click on the active column flips its order; on another column it sorts descending first
        target = (key if descending else f"-{key}") if active else f"-{key}"
        arrow = ("▼" if descending else "▲") if active else ""
        order = ("descending" if descending else "ascending") if active else "none"
        headings.append({"heading": heading, "href": _query(args, sort=target, page=None), "arrow": arrow, "order": order})
    return render_template(
        "audit_decisions.html",
        **_form(args),
        auditor=auditor,
        problem=None,
        page=page,
        pages=pages,
        headings=headings,
        sort=sort,
        sortable=sorted(SORTABLE),
        previous=_query(args, page=page_number - 1) if page_number > 1 else None,
        next=_query(args, page=page_number + 1) if page_number < pages else None,
        first_row=(page_number - 1) * per_page + 1 if page.items else 0,
        last_row=(page_number - 1) * per_page + len(page.items),
    )


# -- one decision ---------------------------------------------------------------------------------


class _SafeLinks(Treeprocessor):
    """Drops link and image targets that are not http(s), mailto, local or fragment references."""

    def run(self, root: etree.Element) -> None:
        for element in root.iter():
            for attribute in ("href", "src"):
                value = element.get(attribute)
                if value is not None and not _safe_url(value, local=True):
                    del element.attrib[attribute]


class _NoRawHtml(Extension):
    """Markdown without raw HTML (it is shown as text) and with only safe link targets."""

    def extendMarkdown(self, md: markdown.Markdown) -> None:
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")
        md.treeprocessors.register(_SafeLinks(md), "safe_links", 0)


def _safe_url(value: str, *, local: bool = False) -> bool:
    value = value.strip()
    if local and (value.startswith("#") or (value.startswith("/") and not value.startswith("//"))):
        return True
    return urlsplit(value).scheme.lower() in SAFE_SCHEMES


def render_markdown(source: str) -> Markup:
    """A card's detail as HTML; any HTML inside the Markdown is escaped, not passed through."""
    converter = markdown.Markdown(
        extensions=["tables", _NoRawHtml()], extension_configs={"tables": {"use_align_attribute": True}}
    )
    return Markup(converter.convert(source))


@bp.app_template_filter("audit_time")
def _audit_time(value: Any) -> str:
    """An ISO 8601 time from the log as "2026-11-24 10:05:00" (UTC)."""
    if not isinstance(value, str):
        return "" if value is None else str(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo:
        parsed = parsed.astimezone(UTC)
    return parsed.strftime("%Y-%m-%d %H:%M:%S")


@bp.app_template_filter("audit_url")
def _audit_url(value: Any) -> str | None:
    """A URL from a stored card, only when it is safe to link to."""
    return value if isinstance(value, str) and _safe_url(value) else None


@bp.get("/decisions/<int:decision_id>/proof")
@login_required
def decision_proof(decision_id: int, auditor: Auditor) -> Any:
    """The decision's inclusion proof under the newest signed checkpoint (C2SP tlog-proof), as a download."""
    if not 1 <= decision_id <= MAX_ID:
        raise ApiError(404, "not_found", f"There is no decision {decision_id}.")
    components().decision_log.record_access(auditor.username, "page.proof", {"decision_id": decision_id})
    text = prove_entry(_engine(), "decision", decision_id)
    return _download(text, f"decision-{decision_id}.proof")


@bp.get("/decisions/<int:decision_id>/feedback/<int:feedback_id>/proof")
@login_required
def feedback_proof(decision_id: int, feedback_id: int, auditor: Auditor) -> Any:
    """The inclusion proof of one feedback item on this decision: what the clinician did with the card."""
    if max(decision_id, feedback_id) > MAX_ID:  # no such row; and the access log's JSON holds 64-bit numbers only
        raise ApiError(404, "not_found", f"Decision {decision_id} has no feedback item {feedback_id}.")
    details = {"decision_id": decision_id, "feedback_id": feedback_id}
    components().decision_log.record_access(auditor.username, "page.proof", details)
    text = prove_feedback(_engine(), decision_id, feedback_id)
    return _download(text, f"feedback-{feedback_id}.proof")


@bp.get("/decisions/<int:decision_id>")
@login_required
def decision(decision_id: int, auditor: Auditor) -> Any:
    found = get_decision(_engine(), decision_id)
    if found is None:
        raise ApiError(404, "not_found", f"There is no decision {decision_id}.")
    components().decision_log.record_access(auditor.username, "page.view", {"decision_id": decision_id})
    cards = [
        {
            "card": card,
            "detail": render_markdown(card["detail"]) if isinstance(card.get("detail"), str) else None,
            "json": json.dumps(card, indent=2, ensure_ascii=False),
        }
        for card in found.get("cards") or []
        if isinstance(card, dict)
    ]
    return render_template(
        "audit_decision.html",
        auditor=auditor,
        d=found,
        why=explain(found.get("reason")),
        assessment=found.get("assessment") or {},
        cards=cards,
        back=request.referrer if _is_table_url(request.referrer) else url_for("audit_pages.decisions"),
    )


def _is_table_url(referrer: str | None) -> bool:
    if not referrer:
        return False
    parts = urlsplit(referrer)
    return parts.netloc == request.host and parts.path == url_for("audit_pages.decisions")


@bp.get("/population")
@login_required
def population_jobs(auditor: Auditor) -> Any:
    from cds_service.population.tables import PopulationJob
    from cds_service.population.views import job_summary

    with _engine().connect() as connection:
        rows = connection.execute(select(PopulationJob).order_by(PopulationJob.created_at.desc()).limit(200)).mappings().all()
    components().decision_log.record_access(auditor.username, "page.population", {})
    return render_template("audit_population.html", jobs=[job_summary(row) for row in rows], auditor=auditor)


GOVERNANCE_FIELDS = ("from", "to", "tenant", "hook")


@bp.get("/governance")
@login_required
def governance_page(auditor: Auditor) -> Any:
    """Alert governance: firing rate, acceptance and overrides per site, hook and model version, with the trend."""
    args = {k: v for k, v in _args().items() if k in GOVERNANCE_FIELDS}
    if not any(args.values()):
        args["from"] = (datetime.now(UTC).date() - timedelta(days=DASHBOARD_DAYS - 1)).isoformat()
    values = {name: args.get(name, "") for name in GOVERNANCE_FIELDS}
    try:
        filters = _filters(args)
    except ApiError as exc:
        return render_template("audit_governance.html", auditor=auditor, values=values, problem=exc.message, report=None), 400
    parts = components()
    report = governance(_engine(), filters, parts.settings.governance_warning_share)
    parts.decision_log.record_access(auditor.username, "page.governance", filters.to_log())
    trend_charts = [
        charts.bar_chart(
            f"Cards per 100 eligible calls by week: {g['issuer'] or 'no issuer'} {g['tenant']} {g['hook']} {g['model_version']}",
            [(week["week"], week["cards_per_100_eligible"] or 0.0) for week in g["trend"]],
            whole=False,
        )
        for g in report["groups"]
        if g["eligible"]
    ]
    return render_template(
        "audit_governance.html",
        auditor=auditor,
        values=values,
        problem=None,
        report=report,
        trend_charts=trend_charts,
        csv_url=_query(args, "audit_api.governance_csv"),
    )


ACCESS_FIELDS = ("from", "to", "auditor", "action", "decision", "patient")


@bp.get("/access")
@login_required
def access_log(auditor: Auditor) -> Any:
    """Who searched, opened or exported what: the access log, searchable like the decisions."""
    args = {k: v for k, v in _args().items() if k in (*ACCESS_FIELDS, "page", "per_page")}
    values = {name: args.get(name, "") for name in ACCESS_FIELDS}
    try:
        filters = AccessFilters.from_args(args, components().decision_log.pseudonym)
        _, page_number, per_page = page_args({k: v for k, v in args.items() if k in ("page", "per_page")})
    except ApiError as exc:
        return render_template("audit_access.html", auditor=auditor, values=values, problem=exc.message, page=None), 400
    page = list_access(_engine(), filters, page=page_number, per_page=per_page)
    components().decision_log.record_access(auditor.username, "page.access", {**filters.to_log(), "page": page_number})
    pages = max(1, -(-page.total // per_page))
    return render_template(
        "audit_access.html",
        auditor=auditor,
        values=values,
        problem=None,
        page=page,
        pages=pages,
        previous_url=_query(args, "audit_pages.access_log", page=page_number - 1) if page_number > 1 else None,
        next_url=_query(args, "audit_pages.access_log", page=page_number + 1) if page_number < pages else None,
        export_url=_query({k: v for k, v in args.items() if k in ACCESS_FIELDS}, "audit_api.access_export"),
    )


@bp.get("/checkpoints")
@login_required
def checkpoints_page(auditor: Auditor) -> Any:
    """The signed checkpoints an outside auditor keeps, with the key that verifies them and proofs between them."""
    parts = components()
    parts.decision_log.record_access(auditor.username, "page.checkpoints", {})
    return render_template(
        "audit_checkpoints.html",
        auditor=auditor,
        verifier_key=parts.runtime.checkpoint_signer.verifier_key,
        checkpoints=checkpoints(parts.engine),
    )


def _download(text: str, filename: str) -> Response:
    response = Response(text, mimetype="text/plain")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _no_checkpoint(size: int) -> ApiError:
    return ApiError(404, "not_anchored", f"There is no signed checkpoint of size {size}.")


@bp.get("/checkpoints/<int:size>/note")
@login_required
def checkpoint_download(size: int, auditor: Auditor) -> Any:
    """One signed checkpoint (C2SP signed note), to keep and later prove the log only grew from it."""
    if size > MAX_ID:
        raise _no_checkpoint(size)
    components().decision_log.record_access(auditor.username, "page.checkpoint", {"size": size})
    note = checkpoint_note(_engine(), size)
    if note is None:
        raise _no_checkpoint(size)
    return _download(note, f"checkpoint-{size}.note")


@bp.get("/checkpoints/consistency")
@login_required
def consistency_from_kept(auditor: Auditor) -> Any:
    """The form's way to the consistency proof from a checkpoint the auditor kept, listed here or not."""
    raw = request.args.get("from", "").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_ID:
        raise ApiError(400, "invalid_filter", "Give the size of the checkpoint you kept: its second line, a whole number.")
    return redirect(url_for("audit_pages.consistency_download", size=int(raw)))


@bp.get("/checkpoints/<int:size>/consistency")
@login_required
def consistency_download(size: int, auditor: Auditor) -> Any:
    """The consistency proof from the checkpoint of `size` entries to the newest, as the file verify-consistency reads."""
    if size > MAX_ID:
        raise _no_checkpoint(size)
    components().decision_log.record_access(auditor.username, "page.consistency", {"from": size})
    text = consistency_file(_engine(), size)
    return _download(text, f"consistency-{size}.json")
