"""The hook-call and feedback pipelines the views call.

One hook call (`HookPipeline.handle`): read the body (413/415), resolve the service (404), parse and
validate the request (400), complete the prefetch (412), evaluate with `hooks`, decide what is displayed
(snoozing), record the decision (built once, at the end) and commit, then answer. Every call after
authentication is logged, including the ones that fail, so the log is complete.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import ValidationError

from cds_service.cds_hooks.auth import Caller
from cds_service.cds_hooks.edge import MAX_DEPTH, FeedbackItem, HookRequestBody, invalid, parse_json
from cds_service.cds_hooks.fetch import PrefetchFetcher
from cds_service.database import utcnow, width
from cds_service.decision_log.tables import Decision, Feedback
from cds_service.decision_log.writer import CardDecision, DecisionLog
from cds_service.errors import DATABASE_UNAVAILABLE, ApiError
from cds_service.settings import Settings, TrustedIssuer
from hooks.cards import OVERRIDE_REASONS, OVERRIDE_SYSTEM, CardOptions
from hooks.model import Model
from hooks.services import SERVICES_BY_ID, Catalog, Evaluation, ServiceDeclaration, evaluate
from hooks.snooze import SnoozeRule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HookRequest:
    hook: str
    hook_instance: str
    context: Mapping[str, Any]
    prefetch: Mapping[str, Any]
    fhir_server: str | None
    access_token: str | None


def _bad(message: str, **details: Any) -> ApiError:
    return ApiError(400, "invalid_request", message, **details)


def validate_hook_request(document: Any, service: ServiceDeclaration) -> HookRequest:
    """The request as the service reads it: typed and bounded at the edge (`HookRequestBody`), then the rules
    that depend on the hook."""
    if not isinstance(document, dict):
        raise _bad("The request body must be a JSON object.")
    hook = document.get("hook")
    if not isinstance(hook, str) or not hook:
        raise _bad("'hook' is required and must be a string.", field="hook")
    if hook != service.hook:
        raise ApiError(400, "wrong_hook", f"Service '{service.id}' answers '{service.hook}', not '{hook}'.", field="hook")
    try:  # types and bounds: column lengths, FHIR ids, URLs that parse, no control characters
        body = HookRequestBody.model_validate(document)
    except ValidationError as exc:
        raise invalid(exc) from None
    context = document["context"]
    for name in service.required_context:
        if name not in context or context[name] is None:
            raise _bad(f"context.{name} is required for the {hook} hook.", field=f"context.{name}")
    selections = service.selections_field
    if selections and not (isinstance(context.get(selections), list) and all(isinstance(s, str) for s in context[selections])):
        raise _bad(f"context.{selections} must be an array of strings.", field=f"context.{selections}")
    # the Bundle the hook reads; a field another hook defines is not this hook's to check
    bundle = context.get(service.trigger_field) if service.trigger_field else None
    if bundle is not None and not (isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle"):
        raise _bad(f"context.{service.trigger_field} must be a FHIR Bundle.", field=f"context.{service.trigger_field}")
    if body.fhirAuthorization is not None and body.fhirServer is None:
        raise _bad("'fhirAuthorization' is only allowed together with 'fhirServer'.", field="fhirAuthorization")
    token = body.fhirAuthorization.access_token if body.fhirAuthorization else None
    return HookRequest(hook, body.hookInstance, context, document.get("prefetch") or {}, body.fhirServer, token)


def snooze_rule(settings: Settings) -> SnoozeRule:
    """Feedback snoozes the service for that patient: an override with a reason the cards offer for that
    reason's days in `snooze_days_by_reason` (`snooze_days` when it has none), any other override for
    `snooze_days`, accepting the card's suggestion for the days of `accepted`."""
    by_reason = settings.snooze_days_by_reason
    return SnoozeRule(
        system=OVERRIDE_SYSTEM,
        reasons=tuple((r["code"], by_reason.get(r["code"], settings.snooze_days)) for r in OVERRIDE_REASONS),
        other_days=settings.snooze_days,
        accepted_days=by_reason.get("accepted", settings.snooze_days),
    )


def card_options(issuer: TrustedIssuer | None, docs_url: str) -> CardOptions:
    """How cards are written for a caller: its issuer's card settings."""
    if issuer is None:
        return CardOptions(docs_url=docs_url)
    return CardOptions(
        docs_url=docs_url,
        detail_format=issuer.detail_format,
        order_codings=tuple(c.model_dump(exclude_none=True) for c in issuer.order_codings),
        link_allowlist=tuple(issuer.link_allowlist),
        annotate_orders=issuer.annotate_orders,
    )


@dataclass(frozen=True)
class CallFacts:
    """What is known of a hook call so far; each step adds to it, and the decision row is built from it once."""

    service_id: str
    issuer: str
    tenant: str | None
    hook: str | None = None
    hook_instance: str | None = None
    input_digest: str | None = None
    user_id: str | None = None
    patient_id: str | None = None
    patient_pseudonym: str | None = None


@dataclass(frozen=True)
class Display:
    """What the call shows: the evaluation's cards and system actions, unless feedback snoozed them."""

    cards: list[dict[str, Any]]
    system_actions: list[dict[str, Any]]
    outcome: str  # cards | no-card | snoozed


class HookPipeline:
    """One hook call in named steps: read the body, resolve the service, parse the request, complete the
    prefetch, evaluate, decide what is displayed, record the decision, answer."""

    def __init__(
        self,
        model: Model,
        fetcher: PrefetchFetcher,
        decision_log: DecisionLog,
        digest_key: bytes,
        snooze: SnoozeRule,
        catalog: Catalog | None = None,
        issuers: Mapping[str, TrustedIssuer] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.model = model
        self.fetcher = fetcher
        self.log = decision_log
        self._digest_key = digest_key
        self.snooze = snooze
        self.catalog = catalog or Catalog.build(model)
        self.issuers = dict(issuers or {})
        self.clock = clock

    def _user(self, user_id: str | None) -> str | None:
        """Clinician ids are kept as sent; a patient or relative using the app is kept as a pseudonym."""
        if user_id and user_id.startswith(("Patient/", "RelatedPerson/")):
            kind, _, identifier = user_id.partition("/")
            return f"{kind}/pseudonym-{self.log.pseudonym(identifier)}"
        return user_id

    def input_digest(self, document: Any) -> str:
        """A keyed digest of the request as sent, without its FHIR access token."""
        if isinstance(document, dict):
            document = {k: v for k, v in document.items() if k != "fhirAuthorization"}
        try:
            canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # orjson writes at most MAX_DEPTH levels: a body it cannot write cannot be logged
            raise ApiError(400, "invalid_request", f"The body is nested deeper than {MAX_DEPTH} levels.") from None
        return "hmac-sha256:" + hmac.new(self._digest_key, canonical, hashlib.sha256).hexdigest()

    def handle(self, service_id: str, read_body: Callable[[], bytes], caller: Caller, base_url: str) -> dict[str, Any]:
        """Answer one hook call. Every call after authentication is logged, the failed ones included:
        `read_body` may itself refuse the body (413, 415), and that refusal is logged like the others."""
        started = time.perf_counter()
        facts = CallFacts(service_id[: width(Decision.service_id)], caller.issuer, caller.tenant)
        try:
            body = read_body()
            service = self.resolve(service_id)
            document = parse_json(body)
            facts = self.identify(facts, document)
            if isinstance(document, dict):
                facts = replace(facts, input_digest=self.input_digest(document))
            request = validate_hook_request(document, service)
            facts = self.identify_people(facts, request)
            prefetch, notes = self.complete_prefetch(request, caller)
            evaluation = self.evaluate(service, request, prefetch, notes, caller, base_url, facts)
        except ApiError as exc:
            self.log.append(self.failure_row(facts, exc.code, exc.status, started))
            raise
        except DATABASE_UNAVAILABLE:
            raise  # nothing can be logged: the handler answers 503 with Retry-After, and no card leaves
        except Exception:
            # every authenticated call is logged, a failure of the service's own included: the row goes
            # in before the 500 leaves (without the request's contents, which may be what failed)
            log.exception("hook call failed")
            self.log.append(self.failure_row(facts, "internal_error", 500, started))
            raise ApiError(500, "internal_error", "The service failed to handle the request.") from None
        display = self.decide_display(facts, evaluation)
        row = self.decision_row(facts, evaluation, display, started)
        return self.answer(facts, row, self.log.append(row), display)

    def resolve(self, service_id: str) -> ServiceDeclaration:
        service = self.catalog.get(service_id)
        if service is None:
            raise ApiError(404, "unknown_service", f"No CDS service '{service_id}'.")
        return service

    def identify(self, facts: CallFacts, document: Any) -> CallFacts:
        """The call's hook and hookInstance, read before validation so a refused call is logged with them;
        kept only when they fit their columns: an oversized one is what the 400 will be about."""
        if not isinstance(document, dict):
            return facts
        return replace(
            facts,
            hook=_bounded(document.get("hook"), width(Decision.hook)),
            hook_instance=_bounded(document.get("hookInstance"), width(Decision.hook_instance)),
        )

    def identify_people(self, facts: CallFacts, request: HookRequest) -> CallFacts:
        patient_id = request.context.get("patientId")
        return replace(
            facts,
            user_id=self._user(request.context.get("userId")),
            patient_id=patient_id,
            patient_pseudonym=self.log.pseudonym(patient_id),
        )

    def complete_prefetch(self, request: HookRequest, caller: Caller) -> tuple[dict[str, Any], list[str]]:
        prefetch, notes = self.fetcher.complete(
            self.catalog.prefetch, request.context, request.prefetch, request.fhir_server, request.access_token, caller.issuer
        )
        return prefetch, list(notes)

    def evaluate(
        self,
        service: ServiceDeclaration,
        request: HookRequest,
        prefetch: Mapping[str, Any],
        notes: list[str],
        caller: Caller,
        base_url: str,
        facts: CallFacts,
    ) -> Evaluation:
        return evaluate(
            self.model,
            service,
            request.context,
            prefetch,
            card_options(self.issuers.get(caller.issuer), f"{base_url}/model"),
            today=self.clock().date(),
            # card uuids are stable for a retry of this very call and differ for any other use of
            # the hookInstance (another patient, body or caller): feedback then finds the right card
            instance="|".join((request.hook_instance, service.id, caller.issuer, caller.tenant or "", facts.input_digest or "")),
            notes=notes,
        )

    def decide_display(self, facts: CallFacts, evaluation: Evaluation) -> Display:
        """Cards are shown unless feedback on this service's cards for the patient snoozes them: the
        clinician's override stands, and neither cards nor annotations are sent meanwhile."""
        if not evaluation.cards:
            return Display([], evaluation.system_actions, "no-card")  # annotations come with cards; none here
        if self.snooze.silences and facts.patient_pseudonym:
            now = self.clock()
            earlier = self.log.feedback_on_patient(
                facts.service_id, facts.patient_pseudonym, facts.issuer, facts.tenant, now - timedelta(days=self.snooze.longest_days)
            )
            if self.snooze.snoozed(earlier, now):
                return Display([], [], "snoozed")
        return Display(evaluation.cards, evaluation.system_actions, "cards")

    def failure_row(self, facts: CallFacts, outcome: str, status: int, started: float) -> Decision:
        return Decision(
            **self._identity(facts),
            card_uuids=[],
            suggestion_uuids=[],
            cards=[],
            outcome=outcome,
            reason=outcome,  # a failed call's reason is its error code
            status_code=status,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def decision_row(self, facts: CallFacts, evaluation: Evaluation, display: Display, started: float) -> Decision:
        """The decision as logged: the patient named only by pseudonym, so its references in the cards and
        system actions are masked; the assessment is kept whatever is displayed."""
        assessment = evaluation.assessment.to_dict()
        if evaluation.system_actions:
            # what the service asks the EHR to do is part of its answer: logged with the assessment (and
            # when the cards are snoozed, the outcome says none of it was sent)
            assessment["system_actions"] = self._masked(evaluation.system_actions, facts)
        shown = bool(display.cards)
        return Decision(
            **self._identity(facts),
            model_id=self.model.id,
            model_version=self.model.version,
            model_hash=self.model.hash,
            band=evaluation.assessment.band,
            assessment=assessment,
            cards=self._masked(display.cards, facts),
            card_uuids=evaluation.card_uuids() if shown else [],
            suggestion_uuids=evaluation.suggestion_uuids() if shown else [],
            outcome=display.outcome,
            reason="snoozed" if display.outcome == "snoozed" else evaluation.reason,
            status_code=200,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    @staticmethod
    def answer(facts: CallFacts, row: Decision, stored: Decision, display: Display) -> dict[str, Any]:
        if stored is not row:  # a retried hookInstance: answer exactly what the log holds
            actions = (stored.assessment or {}).get("system_actions") if stored.outcome == "cards" else None
            answer = {"cards": stored.cards, **({"systemActions": actions} if actions else {})}
            return _swap(answer, _PATIENT_MASK, f"Patient/{facts.patient_id}") if facts.patient_id else answer
        return {"cards": display.cards, **({"systemActions": display.system_actions} if display.system_actions else {})}

    @staticmethod
    def _identity(facts: CallFacts) -> dict[str, Any]:
        return {
            "service_id": facts.service_id,
            "issuer": facts.issuer,
            "tenant": facts.tenant,
            "hook": facts.hook,
            "hook_instance": facts.hook_instance,
            "input_digest": facts.input_digest,
            "user_id": facts.user_id,
            "patient_pseudonym": facts.patient_pseudonym,
        }

    @staticmethod
    def _masked(value: Any, facts: CallFacts) -> Any:
        return _swap(value, f"Patient/{facts.patient_id}", _PATIENT_MASK) if facts.patient_id else value


_PATIENT_MASK = "Patient/{{context.patientId}}"


def _swap(value: Any, old: str, new: str) -> Any:
    """`value` with every string equal to `old` replaced by `new`."""
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap(v, old, new) for v in value]
    return new if value == old else value


class FeedbackPipeline:
    def __init__(self, decision_log: DecisionLog, max_items: int = 1000) -> None:
        self.log = decision_log
        self.max_items = max_items

    def handle(self, service_id: str, body: bytes, caller: Caller) -> dict[str, Any]:
        if service_id not in SERVICES_BY_ID:
            raise ApiError(404, "unknown_service", f"No CDS service '{service_id}'.")
        document = parse_json(body)
        items = document.get("feedback") if isinstance(document, dict) else None
        if not isinstance(items, list) or not items:
            raise _bad("The body must be an object with a non-empty 'feedback' array.", field="feedback")
        if len(items) > self.max_items:
            raise ApiError(
                413,
                "too_many_items",
                f"At most {self.max_items} feedback items per call; send the rest in another.",
                field="feedback",
            )
        rejected: list[dict[str, Any]] = []
        parsed: list[tuple[int, FeedbackItem]] = []
        for index, item in enumerate(items):
            try:
                parsed.append((index, _feedback_item(item, index)))
            except ApiError as exc:
                rejected.append({"index": index, "code": exc.code, "message": exc.message})
        decisions = self.log.decisions_for_cards(service_id, [i.card for _, i in parsed], caller.issuer, caller.tenant)
        rows: list[Feedback] = []
        for index, item in parsed:
            try:
                rows.append(self._row(service_id, item, decisions.get(item.card), caller))
            except ApiError as exc:
                rejected.append({"index": index, "code": exc.code, "message": exc.message})
        results = self.log.add_feedback_batch(rows)
        stored = sum(results)
        duplicates = len(results) - stored
        if rejected:
            rejected.sort(key=lambda r: int(r["index"]))
            status = 404 if all(r["code"] == "unknown_card" for r in rejected) else 400
            raise ApiError(
                status,
                rejected[0]["code"],
                f"{len(rejected)} feedback item(s) were rejected; {stored} stored.",
                rejected=rejected,
                stored=stored,
            )
        return {"stored": stored, "duplicates": duplicates}

    def _row(self, service_id: str, item: FeedbackItem, decision: CardDecision | None, caller: Caller) -> Feedback:
        if _timestamp(item.outcomeTimestamp) is None:
            raise _bad("feedback.outcomeTimestamp must be an ISO 8601 date-time.")
        if decision is None:
            raise ApiError(404, "unknown_card", f"Card '{item.card}' was not issued by service '{service_id}'.")
        accepted: list[str] = []
        code = system = comment = None
        if item.outcome == "accepted":
            if not item.acceptedSuggestions:
                raise _bad("feedback.acceptedSuggestions is required when the outcome is 'accepted'.")
            for suggestion in item.acceptedSuggestions:
                if suggestion.id not in (decision.suggestion_uuids or []):
                    raise ApiError(400, "unknown_suggestion", "acceptedSuggestions names a suggestion this card did not carry.")
                accepted.append(suggestion.id)
        elif item.overrideReason is not None:
            coding = item.overrideReason.reason
            if isinstance(coding, dict):
                code = _bounded(coding.get("code"), width(Feedback.override_code))
                system = _bounded(coding.get("system"), width(Feedback.override_system))
            comment = item.overrideReason.userComment
        return Feedback(
            decision_id=decision.id,
            service_id=service_id,
            card_uuid=item.card,
            outcome=item.outcome,
            outcome_timestamp=item.outcomeTimestamp,
            accepted_suggestions=accepted,
            override_code=code,
            override_system=system,
            override_comment=comment or None,
            issuer=caller.issuer,
            tenant=caller.tenant,
            patient_pseudonym=decision.patient_pseudonym,
        )


def _bounded(value: Any, length: int) -> str | None:
    """A string that fits its column, else None: an unusable reason code is kept as no code."""
    return value if isinstance(value, str) and 0 < len(value) <= length else None


def _feedback_item(item: Any, index: int) -> FeedbackItem:
    if not isinstance(item, dict):
        raise _bad("A feedback item must be an object.")
    try:
        return FeedbackItem.model_validate(item)
    except ValidationError as exc:
        raise invalid(exc, prefix=f"feedback[{index}].") from None


def _timestamp(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
