"""One JSON error type and one handler for every endpoint."""

from __future__ import annotations

from typing import Any

import psycopg
import sqlalchemy.exc
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

# stable codes for HTTP errors raised by Flask/Werkzeug itself
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error answered as JSON: {"error": {"code": ..., "message": ...}} with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def to_response(self) -> Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        response = jsonify({"error": body})
        response.status_code = self.status
        return response


class Unauthorized(ApiError):
    """A bare 401: the reason is logged server-side, never told to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(401, "unauthorized", "Unauthorized")
        self.reason = reason
        # the `iss` the refused token claims, when it is readable (never verified: a refusal's claim)
        self.claimed_issuer: str | None = None

    @property
    def reason_code(self) -> str:
        """A stable code for the reason, for operators to count and alert on: its words before any ':' or '('."""
        head = self.reason.split(":", 1)[0].split("(", 1)[0].strip().lower()
        return "_".join(head.split()) or "rejected"

    def to_response(self) -> Response:
        response = Response(status=401)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response


class TooManyAttempts(ApiError):
    """429 with Retry-After: too many failed logins for an account or from one address."""

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, -(-retry_after // 60))
        super().__init__(429, "too_many_attempts", f"Too many failed logins; try again in {minutes} minute(s).")
        self.retry_after = retry_after

    def to_response(self) -> Response:
        response = super().to_response()
        response.headers["Retry-After"] = str(self.retry_after)
        return response


class ServiceUnavailable(ApiError):
    """503 with Retry-After: the decision log's database cannot be reached, so no answer can be logged."""

    def __init__(self, retry_after: int = 2) -> None:
        super().__init__(503, "database_unavailable", "The decision log's database is unavailable; retry shortly.")
        self.retry_after = retry_after

    def to_response(self) -> Response:
        response = super().to_response()
        response.headers["Retry-After"] = str(self.retry_after)
        return response


# the driver and pool errors that mean "the database cannot be reached now", not "this request is wrong"
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    psycopg.OperationalError,
)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error.to_response()

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        return ApiError(status, _HTTP_CODES.get(status, "http_error"), error.description or error.name).to_response()

    def _database_unavailable(error: Exception) -> Response:
        app.logger.warning("database unavailable: %s", type(error).__name__)
        return ServiceUnavailable().to_response()

    for kind in DATABASE_UNAVAILABLE:
        app.register_error_handler(kind, _database_unavailable)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        app.logger.exception("unhandled error")
        return ApiError(500, "internal_error", "The service failed to handle the request.").to_response()
