"""Completing the prefetch: fetching, from the EHR's FHIR server, the keys the EHR did not send.

Keys the EHR omitted are fetched in parallel, following Bundle `next` links on the same server up to a
page cap; a prefetched Bundle with a `next` link has its further pages fetched the same way (without a
fhirServer to read them from, the card notes that they were not read). All of a call's fetching shares
one deadline, and every response is streamed and cut off at a size cap, so a server that drips bytes
or answers without end holds a call no longer than the deadline. A key sent as `null` means "no data"
and is not fetched. When missing data cannot be had the call fails with 412 Precondition Failed
(CDS Hooks 2.0).

The FHIR-server rule: the EHR's access token goes only where `cds_service.cds_hooks.egress` allows. An issuer
with `fhir_servers` configured may name only a server under one of those prefixes; an issuer without
may name any host whose addresses are not loopback, link-local, metadata, unspecified, multicast,
reserved or the service's own Redis or database, checked on every connection. `https` only unless
`allow_http`; no redirects, no proxies; `next` links must pass the same rule and stay on the same
server. A refused server answers 412 `fhir_server_not_allowed`, and since every FHIR call carries the
access token (CDS Hooks 2.0: the service presents one with each FHIR API call), a fetch without
`fhirAuthorization` answers 412 `fhir_authorization_required` without calling anyone.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import httpcore
import httpx
import orjson

from cds_service.cds_hooks.egress import EgressPolicy, EgressRefused, Resolver, egress_client, same_origin
from cds_service.errors import ApiError
from cds_service.settings import Settings

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


class FetchTooLarge(ValueError):
    """A FHIR response past the size cap: not read further."""


class FetchDeadline(TimeoutError):
    """The call's fetching deadline passed while a response was still arriving."""


class PrefetchUnavailable(ApiError):
    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(412, "prefetch_unavailable", message, keys=keys)


class FhirServerNotAllowed(ApiError):
    """The request's fhirServer (or a URL built from it) is not one the EHR's token may be sent to."""

    def __init__(self, reason: str, keys: list[str]) -> None:
        message = f"The fhirServer is not one this service may send the access token to: {reason}."
        super().__init__(412, "fhir_server_not_allowed", message, keys=keys)


class FhirAuthorizationRequired(ApiError):
    """Keys must be fetched but the request has no fhirAuthorization: no FHIR call goes out without a token."""

    def __init__(self, keys: list[str]) -> None:
        message = (
            "Prefetch keys are missing and the request has no fhirAuthorization; "
            "this service calls the FHIR server only with the access token the EHR provides."
        )
        super().__init__(412, "fhir_authorization_required", message, keys=keys)


def render_template(template: str, context: Mapping[str, Any]) -> str | None:
    """Fill {{context.x}} and user tokens; None when a token has no primitive value to fill."""
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        token = match.group(1)
        if token.startswith("context."):
            value = context.get(token[len("context.") :])
        elif token in _USER_TOKENS:
            user = context.get("userId")
            prefix = _USER_TOKENS[token] + "/"
            value = user[len(prefix) :] if isinstance(user, str) and user.startswith(prefix) else None
        else:
            value = None
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            missing = True
            return ""
        return str(value)

    rendered = _TOKEN.sub(fill, template)
    return None if missing else rendered


class PrefetchFetcher:
    """Fetches missing prefetch keys from the request's FHIR server, where the egress policy allows."""

    def __init__(
        self,
        timeout: float,
        max_pages: int,
        policy: EgressPolicy,
        *,
        deadline: float | None = None,
        max_bytes: int = 20 * 1024 * 1024,
        network_backend: httpcore.NetworkBackend | None = None,
    ) -> None:
        self.timeout = timeout
        self.deadline = deadline if deadline is not None else timeout
        self.max_bytes = max_bytes
        self.max_pages = max_pages
        self.policy = policy
        # told each key's outcome (ok, failed, refused): the operators' metrics, when enabled
        self.fetched: Callable[[str], None] = lambda outcome: None
        # servers an administrator listed for the issuer are connected to as they resolve; every other host
        # has its addresses checked on each connection. Two pools, so a kept-alive connection opened for a
        # listed server (its address unchecked) never serves the call of an issuer without a list
        self._listed_client = egress_client(policy, timeout=timeout, check_addresses=False, network_backend=network_backend)
        self._checked_client = egress_client(policy, timeout=timeout, check_addresses=True, network_backend=network_backend)
        # one pool per process, shared by its request threads: sized so that every thread's call (8 per
        # worker by default) can have all its keys in flight at once, as on an Oracle call with no prefetch;
        # threads start only when needed
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="prefetch")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        resolver: Resolver = socket.getaddrinfo,
        network_backend: httpcore.NetworkBackend | None = None,
    ) -> PrefetchFetcher:
        """The fetcher the settings describe; `resolver` and `network_backend` are for tests."""
        policy = EgressPolicy.from_settings(settings, resolver=resolver)
        return cls(
            settings.fetch_timeout_seconds,
            settings.fetch_max_pages,
            policy,
            deadline=settings.fetch_deadline_seconds,
            max_bytes=settings.fetch_max_response_bytes,
            network_backend=network_backend,
        )

    def complete(
        self,
        templates: Mapping[str, str],
        context: Mapping[str, Any],
        prefetch: Mapping[str, Any],
        fhir_server: str | None,
        access_token: str | None,
        issuer: str,
    ) -> tuple[dict[str, Any], list[str]]:
        """The prefetch with every template key filled, and notes on anything read only in part.

        `issuer` is the calling EHR's JWT issuer, whose `fhir_servers` decide where its token may go.
        """
        missing = [key for key in templates if key not in prefetch]
        continued = {key: link for key, value in prefetch.items() if (link := _next_link(value)) is not None}
        completed = dict(prefetch)
        notes: list[str] = []
        if not missing and not continued:
            return completed, notes
        if missing and not fhir_server:
            raise PrefetchUnavailable("Prefetch keys are missing and no fhirServer was given to fetch them from.", missing)
        if not fhir_server or not access_token:
            if missing:
                raise FhirAuthorizationRequired(missing)
            notes += [f"Prefetch '{key}' has further pages that were not read (no fhirServer with a token)." for key in continued]
            return completed, notes
        if not missing:
            try:
                base = self.policy.check_url(fhir_server, issuer)
            except EgressRefused as exc:
                # the prefetch is complete as sent; the rest of its pages stay unread, and the card says so
                log.warning("did not read further prefetch pages of a call from issuer %r: %s", issuer, exc.reason)
                notes += [f"Prefetch '{key}' has further pages that were not read (fhirServer not allowed)." for key in continued]
                return completed, notes
        else:
            base = self._allowed(fhir_server, issuer, missing)
        urls: dict[str, httpx.URL] = {}
        for key in missing:
            rendered = render_template(templates[key], context)
            if rendered is None:
                raise PrefetchUnavailable(f"Prefetch template '{key}' cannot be filled from the context.", [key])
            url = self._allowed(f"{fhir_server.rstrip('/')}/{rendered}", issuer, [key])
            if not same_origin(url, base):
                raise self._refusal(issuer, EgressRefused("a prefetch URL built from it leaves its server"), [key])
            urls[key] = url
        further: dict[str, httpx.URL] = {}
        for key, link in continued.items():
            next_url, note = self._next(link, key, base, issuer)
            if next_url is None:
                notes.append(note or f"A further page of '{key}' was not fetched.")
            else:
                further[key] = next_url
        headers = {"Accept": "application/fhir+json", "Authorization": f"Bearer {access_token}"}
        client = self._listed_client if self.policy.listed(issuer) else self._checked_client
        deadline = time.monotonic() + self.deadline
        futures = {
            key: self._pool.submit(self._fetch, client, key, url, base, issuer, headers, deadline, self.max_pages)
            for key, url in urls.items()
        }
        # the first page came with the prefetch: the page cap counts it
        more = {
            key: self._pool.submit(self._fetch, client, key, url, base, issuer, headers, deadline, self.max_pages - 1)
            for key, url in further.items()
            if self.max_pages > 1
        }
        failed: list[str] = []
        refused: list[tuple[str, EgressRefused]] = []
        for key, future in futures.items():
            try:
                completed[key], key_notes = self._result(future, deadline)
                notes.extend(key_notes)
                self.fetched("ok")
            except EgressRefused as exc:  # the address check on connecting
                refused.append((key, exc))
                self.fetched("refused")
            except (httpx.HTTPError, ValueError, TimeoutError):
                failed.append(key)
                self.fetched("failed")
        for key, future in more.items():
            try:
                pages, key_notes = self._result(future, deadline)
            except (EgressRefused, httpx.HTTPError, ValueError, TimeoutError):
                # the prefetch the EHR sent stands; the card says the rest could not be read
                notes.append(f"Further pages of the prefetched '{key}' could not be read from the FHIR server.")
                continue
            completed[key] = [prefetch[key], *(pages if isinstance(pages, list) else [pages])]
            notes.extend(key_notes)
        if refused:
            raise self._refusal(issuer, refused[0][1], sorted(key for key, _ in refused))
        if failed:
            raise PrefetchUnavailable("The FHIR server did not provide the data this service needs.", sorted(failed))
        return completed, notes

    @staticmethod
    def _result(future: Future[tuple[Any, list[str]]], deadline: float) -> tuple[Any, list[str]]:
        """The fetch's result by the call's deadline: the request thread never waits past it (the fetch
        itself stops at the deadline too, at its next chunk)."""
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()) + 0.25)
        except FutureTimeout:
            future.cancel()
            raise FetchDeadline("the fetching deadline passed") from None

    def _allowed(self, url: str, issuer: str, keys: list[str]) -> httpx.URL:
        try:
            return self.policy.check_url(url, issuer)
        except EgressRefused as exc:
            raise self._refusal(issuer, exc, keys) from None

    @staticmethod
    def _refusal(issuer: str, refused: EgressRefused, keys: list[str]) -> FhirServerNotAllowed:
        # the reason names no URL and no token; the issuer is configuration, written with repr against log forging
        log.warning("refused the fhirServer of a call from issuer %r: %s", issuer, refused.reason)
        return FhirServerNotAllowed(refused.reason, keys)

    def _fetch(
        self,
        client: httpx.Client,
        key: str,
        url: httpx.URL,
        base: httpx.URL,
        issuer: str,
        headers: dict[str, str],
        deadline: float,
        max_pages: int,
    ) -> tuple[Any, list[str]]:
        pages: list[Any] = []
        notes: list[str] = []
        next_url: httpx.URL | None = url
        while next_url:
            if len(pages) == max_pages:
                notes.append(f"Only the first {self.max_pages} pages of '{key}' were read; the record may hold more.")
                break
            page = orjson.loads(self._read(client, next_url, headers, deadline))
            if not isinstance(page, dict) or "resourceType" not in page:
                raise ValueError("not a FHIR resource")
            pages.append(page)
            next_url = None
            link = _next_link(page)
            if link is not None:
                next_url, note = self._next(link, key, base, issuer)
                if note:
                    notes.append(note)
        return (pages[0] if len(pages) == 1 else pages), notes

    def _read(self, client: httpx.Client, url: httpx.URL, headers: dict[str, str], deadline: float) -> bytes:
        """One response body, streamed: cut off at the size cap and at the call's deadline."""
        if time.monotonic() >= deadline:
            raise FetchDeadline("the fetching deadline passed")
        with client.stream("GET", url, headers=headers) as response:
            response.raise_for_status()  # a redirect too: it is never followed
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise FetchTooLarge(f"a response of {declared} bytes is over the cap")
            body = bytearray()
            for chunk in response.iter_bytes():  # decoded: the cap holds against a compressed bomb
                body += chunk
                if len(body) > self.max_bytes:
                    raise FetchTooLarge(f"a response over {self.max_bytes} bytes")
                if time.monotonic() >= deadline:
                    raise FetchDeadline("the fetching deadline passed")
        return bytes(body)

    def _next(self, link: str, key: str, base: httpx.URL, issuer: str) -> tuple[httpx.URL | None, str | None]:
        """A `next` link to follow, or a note on why it is not: the token goes only where the policy allows."""
        try:
            url = self.policy.check_url(link, issuer)
        except EgressRefused:
            url = None
        if url is not None and same_origin(url, base):
            return url, None
        try:
            other_server = not same_origin(httpx.URL(link), base)
        except httpx.InvalidURL:
            other_server = True
        if other_server:
            return None, f"A further page of '{key}' on another server was not fetched."
        return None, f"A further page of '{key}' outside the FHIR server this service may read was not fetched."


def _next_link(value: Any) -> str | None:
    """The `next` link of a searchset Bundle, if it has one (the last page of a list of pages)."""
    if isinstance(value, list):
        value = value[-1] if value else None
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        return None
    links = value.get("link")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None
