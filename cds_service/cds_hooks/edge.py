"""The HTTP edge: request bodies parsed into typed, bounded models before anything else reads them.

Bounds come from the CDS Hooks 2.0 and FHIR R4 specifications and from the decision log's columns, so
nothing a caller sends can overflow a column, smuggle a header or a control character into a URL or a
log line, or nest deeper than the JSON encoder can write. Every violation is one 400 that names the
offending field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from cds_service.database import width
from cds_service.decision_log.tables import Decision, Feedback
from cds_service.errors import ApiError

# FHIR R4 strings: "SHALL NOT contain Unicode character points below 32, except for u0009, u000D and u000A".
# In JSON such characters arrive escaped; the escape is real only after an odd run of backslashes. The
# pattern starts at a backslash, so the scan skips to backslashes and costs nothing on most bodies.
_CONTROL_ESCAPE = re.compile(rb"(\\+)(?:u00(?:0[0-8bBcCeEfF]|1[0-9a-fA-F])|[bf])")


def _has_control_escape(body: bytes) -> bool:
    return any(len(match.group(1)) % 2 == 1 for match in _CONTROL_ESCAPE.finditer(body))


# orjson writes at most this many levels; the decision log digests every hook request it answers
MAX_DEPTH = 254
# the FHIR R4 id datatype
FHIR_ID = r"^[A-Za-z0-9\-\.]{1,64}$"
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"

Text = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=_NO_CONTROL)]
FhirId = Annotated[str, StringConstraints(pattern=FHIR_ID)]


def parse_json(body: bytes) -> Any:
    """The request body as JSON, refusing what FHIR forbids in strings (the depth a hook call may nest to is
    checked where the log digests it, `HookPipeline.input_digest`)."""
    if b"\\" in body and _has_control_escape(body):
        raise ApiError(
            400,
            "invalid_request",
            "The body holds a control character in a string; FHIR and CDS Hooks allow only tab, CR and LF.",
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "malformed_json", "The request body is not valid JSON.") from None


def field_of(error: ValidationError) -> tuple[str, str]:
    """The dotted path and message of the first problem pydantic found."""
    first = error.errors(include_url=False, include_input=False, include_context=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return where, first["msg"]


def invalid(error: ValidationError, prefix: str = "") -> ApiError:
    where, message = field_of(error)
    where = f"{prefix}{where}" if prefix else where
    return ApiError(400, "invalid_request", f"{where}: {message}.", field=where)


def absolute_url(value: str) -> str:
    """An absolute http(s) URL with a host that parses; no whitespace or control characters anywhere."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises for a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http or https URL")
    return value


class FhirAuthorization(BaseModel):
    """CDS Hooks 2.0 fhirAuthorization: the token the service may use on fhirServer."""

    model_config = ConfigDict(extra="allow")

    access_token: Annotated[str, StringConstraints(min_length=1, max_length=16384, pattern=_NO_CONTROL)]
    token_type: Annotated[str, StringConstraints(max_length=20)] = "Bearer"
    expires_in: int | None = Field(None, ge=0, le=2**31 - 1)
    scope: Annotated[str, StringConstraints(max_length=8192, pattern=_NO_CONTROL)] | None = None
    subject: Annotated[str, StringConstraints(max_length=500, pattern=_NO_CONTROL)] | None = None
    patient: FhirId | None = None

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError("must be 'Bearer'")
        return value


class HookContext(BaseModel):
    """The context fields this service reads; other fields pass through untouched."""

    model_config = ConfigDict(extra="allow")

    userId: Text | None = None  # CDS Hooks field names, as sent
    patientId: FhirId | None = None
    encounterId: FhirId | None = None
    selections: list[Annotated[str, StringConstraints(max_length=200, pattern=_NO_CONTROL)]] | None = Field(None, max_length=1000)


class HookRequestBody(BaseModel):
    """A CDS Hooks 2.0 request, bounded by what the service stores and fetches."""

    model_config = ConfigDict(extra="allow")

    hook: Annotated[str, StringConstraints(min_length=1, max_length=width(Decision.hook), pattern=_NO_CONTROL)]
    # the decision log keeps the hookInstance; CDS Hooks makes it a UUID, so 200 characters is ample
    hookInstance: Annotated[str, StringConstraints(min_length=1, max_length=width(Decision.hook_instance), pattern=_NO_CONTROL)]
    fhirServer: Annotated[str, StringConstraints(max_length=2000)] | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: HookContext
    prefetch: dict[Annotated[str, StringConstraints(max_length=100, pattern=_NO_CONTROL)], Any] | None = Field(
        None, max_length=100
    )

    @field_validator("fhirServer")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        return None if value is None else absolute_url(value)


class FeedbackOverride(BaseModel):
    model_config = ConfigDict(extra="allow")

    reason: dict[str, Any] | None = None
    userComment: Annotated[str, StringConstraints(max_length=width(Feedback.override_comment))] | None = None


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=_NO_CONTROL)]


class FeedbackItem(BaseModel):
    """One CDS Hooks 2.0 feedback item."""

    model_config = ConfigDict(extra="allow")

    card: Annotated[str, StringConstraints(min_length=1, max_length=width(Feedback.card_uuid), pattern=_NO_CONTROL)]
    outcome: Literal["accepted", "overridden"]
    outcomeTimestamp: Annotated[str, StringConstraints(min_length=1, max_length=width(Feedback.outcome_timestamp), pattern=_NO_CONTROL)]
    acceptedSuggestions: list[AcceptedSuggestion] | None = Field(None, max_length=100)
    overrideReason: FeedbackOverride | None = None
