"""Auditor accounts, sessions and CSRF protection.

Accounts have hashed passwords (`spine-cds users add`). Pages use a signed session cookie; the JSON
API also accepts HTTP Basic credentials of an account, for scripts. An EHR's Bearer JWT is never
looked at here, so it cannot open anything under /audit.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

from flask import redirect, request, session, url_for
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from cds_service.auditor.tables import User
from cds_service.auditor.throttle import LoginThrottle
from cds_service.components import components
from cds_service.database import utcnow
from cds_service.errors import ApiError

ROLES = ("auditor",)
# compared against when the username is unknown, so a wrong name costs as long as a wrong password
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))

View = TypeVar("View", bound=Callable[..., Any])


class AccountError(ValueError):
    pass


@dataclass(frozen=True)
class Auditor:
    username: str
    role: str


def add_user(engine: Engine, username: str, password: str, role: str = "auditor", *, method: str = "scrypt") -> None:
    """Add an account; `method` is the password hash's (the `PASSWORD_HASH` setting)."""
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if not username.strip():
        raise AccountError("the username is empty")
    _check_password(password)
    with engine.begin() as connection:
        try:
            connection.execute(
                insert(User).values(
                    username=username.strip(),
                    password_hash=generate_password_hash(password, method=method),
                    role=role,
                    active=True,
                    created_at=utcnow(),
                )
            )
        except IntegrityError:
            raise AccountError(f"user {username!r} already exists") from None


def list_users(engine: Engine) -> list[dict[str, Any]]:
    """Every account: name, role, whether it may sign in, when it was made (never the password hash)."""
    columns = (User.username, User.role, User.active, User.created_at)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(select(*columns).order_by(User.username))]


def _change(engine: Engine, username: str, **values: Any) -> None:
    with engine.begin() as connection:
        if connection.execute(update(User).where(User.username == username).values(**values)).rowcount == 0:
            raise AccountError(f"no user {username!r}")


def set_active(engine: Engine, username: str, active: bool) -> None:
    """Let an account sign in again, or stop it; a stopped account's open sessions end at their next request."""
    _change(engine, username, active=active)


def set_password(engine: Engine, username: str, password: str, *, method: str = "scrypt") -> None:
    _check_password(password)
    _change(engine, username, password_hash=generate_password_hash(password, method=method))


def remove_user(engine: Engine, username: str) -> None:
    """Delete the account; what it did stays in the access log under its name."""
    with engine.begin() as connection:
        if connection.execute(delete(User).where(User.username == username)).rowcount == 0:
            raise AccountError(f"no user {username!r}")


def _check_password(password: str) -> None:
    if len(password) < 12:
        raise AccountError("the password must have at least 12 characters")


def check_credentials(engine: Engine, throttle: LoginThrottle, username: str, password: str) -> Auditor | None:
    """The auditor these credentials name, or None; TooManyAttempts while the account or address is locked."""
    address = request.remote_addr
    throttle.refuse_if_locked(username, address)
    auditor = authenticate(engine, username, password)
    if auditor is None:
        throttle.failed(username, address)
    else:
        throttle.succeeded(username)
    return auditor


def authenticate(engine: Engine, username: str, password: str) -> Auditor | None:
    with engine.connect() as connection:
        user = connection.execute(select(User).where(User.username == username, User.active.is_(True))).first()
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not check_password_hash(user.password_hash, password):
        return None
    return Auditor(user.username, user.role)


def log_in(auditor: Auditor) -> None:
    session.clear()
    session["auditor"] = auditor.username
    session["role"] = auditor.role
    session["csrf"] = secrets.token_urlsafe(32)
    session.permanent = True


def log_out() -> None:
    session.clear()


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    """Every state-changing form carries the session's token; a cross-site post does not have it."""
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        raise ApiError(400, "csrf_failed", "The form has expired or did not come from this site; reload and try again.")


def current_auditor(engine: Engine, throttle: LoginThrottle) -> Auditor | None:
    username = session.get("auditor")
    if isinstance(username, str):
        # the account is looked up on every request, so deactivating it ends its sessions at once
        with engine.connect() as connection:
            user = connection.execute(select(User.role).where(User.username == username, User.active.is_(True))).first()
        if user is not None:
            return Auditor(username, user.role)
        session.clear()
    credentials = request.authorization
    if credentials is not None and credentials.type == "basic" and credentials.username and credentials.password:
        return check_credentials(engine, throttle, credentials.username, credentials.password)
    return None


def auditor_required(*, api: bool) -> Callable[[View], View]:
    """Pages redirect to the login form; the API answers 401 with a Basic challenge."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            parts = components()
            auditor = current_auditor(parts.engine, parts.login_throttle)
            if auditor is None:
                if api:
                    error = ApiError(401, "login_required", "Log in as an auditor, or send an auditor's Basic credentials.")
                    response = error.to_response()
                    response.headers["WWW-Authenticate"] = 'Basic realm="spine-cds audit"'
                    return response
                return redirect(url_for("audit_pages.login", next=request.full_path))
            return view(*args, auditor=auditor, **kwargs)

        return cast(View, wrapper)

    return decorate
