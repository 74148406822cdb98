"""Completing the prefetch: fetching, from the EHR's FHIR server, the keys the EHR did not send.

Keys the EHR omitted are fetched in parallel with short timeouts, following Bundle `next` links on
the same server up to a page cap. A key sent as `null` means "no data" and is not fetched. When the
data cannot be had the call fails with 412 Precondition Failed (CDS Hooks 2.0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from cds_service.errors import ApiError

_TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


class PrefetchUnavailable(ApiError):
    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(412, "prefetch_unavailable", message, keys=keys)


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


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


class PrefetchFetcher:
    def __init__(self, timeout: float, max_pages: int, client: httpx.Client | None = None) -> None:
        self.timeout = timeout
        self.max_pages = max_pages
        self.client = client or httpx.Client(timeout=timeout, follow_redirects=False, limits=httpx.Limits(max_connections=20))
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="prefetch")

    def complete(
        self,
        templates: Mapping[str, str],
        context: Mapping[str, Any],
        prefetch: Mapping[str, Any],
        fhir_server: str | None,
        access_token: str | None,
    ) -> tuple[dict[str, Any], list[str]]:
        """The prefetch with every template key filled, and notes on anything read only in part."""
        missing = [key for key in templates if key not in prefetch]
        completed = dict(prefetch)
        notes: list[str] = []
        if not missing:
            return completed, notes
        if not fhir_server:
            raise PrefetchUnavailable("Prefetch keys are missing and no fhirServer was given to fetch them from.", missing)
        urls: dict[str, str] = {}
        for key in missing:
            rendered = render_template(templates[key], context)
            if rendered is None:
                raise PrefetchUnavailable(f"Prefetch template '{key}' cannot be filled from the context.", [key])
            urls[key] = f"{fhir_server.rstrip('/')}/{rendered}"
        headers = {"Accept": "application/fhir+json"}
        if access_token:
            headers["Authorization"] = f"Bearer {access_token}"
        futures = {key: self._pool.submit(self._fetch, key, url, fhir_server, headers) for key, url in urls.items()}
        failed = []
        for key, future in futures.items():
            try:
                completed[key], key_notes = future.result()
                notes.extend(key_notes)
            except (httpx.HTTPError, ValueError):
                failed.append(key)
        if failed:
            raise PrefetchUnavailable("The FHIR server did not provide the data this service needs.", sorted(failed))
        return completed, notes

    def _fetch(self, key: str, url: str, base: str, headers: dict[str, str]) -> tuple[Any, list[str]]:
        pages: list[Any] = []
        notes: list[str] = []
        next_url: str | None = url
        while next_url:
            if len(pages) == self.max_pages:
                notes.append(f"Only the first {self.max_pages} pages of '{key}' were read; the record may hold more.")
                break
            response = self.client.get(next_url, headers=headers)
            response.raise_for_status()
            page = orjson.loads(response.content)
            if not isinstance(page, dict) or "resourceType" not in page:
                raise ValueError("not a FHIR resource")
            pages.append(page)
            next_url = None
            if page["resourceType"] == "Bundle":
                for link in page.get("link") or []:
                    if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
                        if _same_origin(link["url"], base):
                            next_url = link["url"]
                        else:
                            # never send the EHR's token to another origin
                            notes.append(f"A further page of '{key}' on another server was not fetched.")
        return (pages[0] if len(pages) == 1 else pages), notes
