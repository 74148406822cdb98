"""The EHR's access token goes only to a FHIR server the service may send it to, over real HTTP.

Each hook call here names a `fhirServer` and leaves the prefetch for the service to fetch. Loopback
listeners the tests start stand in for what an attacker would aim at, and record every connection, so
"refused" means nothing arrived, not only that the answer was a 412. Only loopback addresses are ever
contacted: where a mistake could send traffic elsewhere (metadata addresses, look-alike names, names
resolved by a stand-in resolver), the service's fetcher is rebuilt on a backend that connects to
loopback address literals only and records anything else. Refusals are decisions too: each is logged,
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
import pytest

from cds_service.cds_hooks.fetch import PrefetchFetcher
from hooks.synthetic import generate, prefetch_for
from tests.cds_service.requests import FHIR_TOKEN, PREFETCH_TEMPLATES, TODAY, fetched_from, patient_view_of
from tests.conftest import redis_client_or_skip
from tests.support import FhirServer, LogReader, Resolver, RunningService, SigningEhr, assert_cards_response, error_of

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"
StartService = Callable[..., RunningService]
StartFhir = Callable[..., FhirServer]
ReadLog = Callable[[RunningService], LogReader]


class Listener:
    """A loopback HTTP listener (127.0.0.1, and ::1 on the same port when it can) recording every connection."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None, body: bytes | None = None) -> None:
        self.status, self.headers = status, headers or {}
        self.body = body if body is not None else b'{"resourceType": "Bundle", "type": "searchset", "total": 0}'
        self.connections: list[str] = []
        self.requests: list[str] = []
        self.port = 0
        self.ipv6 = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextmanager
    def running(self) -> Iterator[Listener]:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                listener.connections.append(self.client_address[0])
                super().setup()

            def do_GET(self) -> None:
                listener.requests.append(self.path)
                self.send_response(listener.status)
                for name, value in listener.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(listener.body)))
                self.end_headers()
                self.wfile.write(listener.body)

            do_POST = do_PUT = do_DELETE = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        class V6Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        with ExitStack() as stack:
            servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler)]
            self.port = servers[0].server_port
            try:
                servers.append(V6Server(("::1", self.port), Handler))
                self.ipv6 = True
            except OSError:
                self.ipv6 = False
            for server in servers:
                stack.callback(server.server_close)
                threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
                stack.callback(server.shutdown)
            yield self


@pytest.fixture
def listener() -> Iterator[Listener]:
    with Listener().running() as running:
        yield running


class LoopbackOnly(httpcore.NetworkBackend):
    """Connects to loopback address literals only; anything else is recorded and fails, so nothing leaves the machine."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()
        self.connected: list[tuple[str, int]] = []
        self.stopped: list[tuple[str, int]] = []

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **options: Any) -> httpcore.NetworkStream:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            self.stopped.append((host, port))
            raise httpcore.ConnectError(f"the test backend connects only to loopback literals, not {host}")
        self.connected.append((host, port))
        return self.inner.connect_tcp(host, port, timeout=timeout, **options)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def guard_with(running: RunningService, resolver: Callable[..., Any] = socket.getaddrinfo) -> LoopbackOnly:
    """Rebuild the running service's fetcher from its settings on a LoopbackOnly backend (and `resolver`)."""
    backend = LoopbackOnly()
    components = running.app.extensions["spine_cds"]
    components.hooks.fetcher = PrefetchFetcher.from_settings(components.settings, resolver=resolver, network_backend=backend)
    return backend


def record() -> list[dict[str, Any]]:
    return generate("radiculopathy-knee-pain", seed=uuid.uuid4().int % 10**9, today=TODAY)


def body_for(fhir_server: str, token: str | None = FHIR_TOKEN) -> dict[str, Any]:
    return fetched_from(patient_view_of(record()), fhir_server, token=token)


def assert_refused(response: httpx.Response, *words: str) -> dict[str, Any]:
    """A 412 fhir_server_not_allowed whose message says why, without the token."""
    assert response.status_code == 412, response.text
    error = error_of(response)
    assert error["code"] == "fhir_server_not_allowed", error
    for word in words:
        assert word in error["message"], error["message"]
    assert FHIR_TOKEN not in response.text
    return error


def assert_logged(running: RunningService, read_log: ReadLog, body: dict[str, Any], outcome: str, status: int = 412) -> None:
    row = read_log(running).decision(hook_instance=body["hookInstance"])
    assert (row["outcome"], row["status_code"]) == (outcome, status)
    assert FHIR_TOKEN not in str(row)


# -- an issuer without fhir_servers: the address rules ---------------------------------------------------

SSRF_HOSTS = {
    "127.0.0.1": "loopback",
    "localhost": "loopback",
    "2130706433": "loopback",  # 127.0.0.1 as one decimal number
    "[::1]": "loopback",
    "0.0.0.0": "unspecified",  # reaches local listeners on Linux
}


@pytest.mark.parametrize("host", sorted(SSRF_HOSTS))
def test_a_loopback_fhir_server_gets_nothing_and_the_refusal_is_logged(
    host: str, listener: Listener, service_factory: StartService, database_url: str, read_log: ReadLog
) -> None:
    """An issuer without a list may not name a loopback (or unspecified) address: the listener there sees no
    connection at all, the answer is 412 fhir_server_not_allowed saying why, and the decision is logged."""
    if host == "[::1]" and not listener.ipv6:
        pytest.skip("no IPv6 loopback here")
    running = service_factory(database_url=database_url)
    body = body_for(f"http://{host}:{listener.port}/fhir")

    assert_refused(running.post(PATIENT_VIEW, body), SSRF_HOSTS[host])

    assert listener.connections == []
    assert_logged(running, read_log, body, "fhir_server_not_allowed")


@pytest.mark.parametrize(
    "fhir_server",
    [
        "http://169.254.169.254/latest/meta-data",
        "https://169.254.169.254/latest/meta-data/iam/security-credentials",
        "http://[fd00:ec2::254]/latest/meta-data",
        "http://100.100.100.200/latest/meta-data",
        "http://[::ffff:169.254.169.254]/latest/meta-data",
    ],
)
def test_cloud_metadata_addresses_are_never_contacted(
    fhir_server: str, service_factory: StartService, database_url: str, read_log: ReadLog
) -> None:
    """The metadata endpoints get no connection attempt: the guard refuses before connecting."""
    running = service_factory(database_url=database_url)
    backend = guard_with(running)
    body = body_for(fhir_server)

    assert_refused(running.post(PATIENT_VIEW, body), "cloud metadata address")

    assert backend.stopped == [] and backend.connected == []
    assert_logged(running, read_log, body, "fhir_server_not_allowed")


def test_the_services_own_redis_and_database_are_refused(
    service_factory: StartService, database_url: str, read_log: ReadLog
) -> None:
    """The host:port of SPINE_CDS_REDIS_URL (and of a PostgreSQL SPINE_CDS_DATABASE_URL) is refused as the
    service's own, whatever else the address is."""
    redis_url = "redis://127.0.0.1:6379/0"
    redis_client_or_skip(redis_url).close()
    running = service_factory(database_url=database_url, redis_url=redis_url)
    targets = ["http://127.0.0.1:6379/fhir"]
    database = urlsplit(database_url)
    if database.hostname:
        targets.append(f"http://{database.hostname}:{database.port or 5432}/fhir")
    for target in targets:
        body = body_for(target)
        assert_refused(running.post(PATIENT_VIEW, body), "the service's own Redis or database")
        assert_logged(running, read_log, body, "fhir_server_not_allowed")


def test_a_name_that_resolves_to_loopback_is_refused(
    listener: Listener, service_factory: StartService, database_url: str, read_log: ReadLog
) -> None:
    """DNS rebinding: a public-looking name whose resolution is loopback (or metadata) is refused on
    connecting, on the address the resolver gave; the listener behind it sees nothing."""
    running = service_factory(database_url=database_url)
    backend = guard_with(
        running,
        Resolver(
            {
                "fhir.rebound.test": ["127.0.0.1"],
                "fhir.mixed.test": ["10.20.30.40", "127.0.0.1"],
                "metadata.google.internal": ["169.254.169.254"],
            }
        ),
    )
    for name, why in [
        ("fhir.rebound.test", "loopback"),
        ("fhir.mixed.test", "loopback"),
        ("metadata.google.internal", "metadata"),
    ]:
        body = body_for(f"http://{name}:{listener.port}/fhir")
        assert_refused(running.post(PATIENT_VIEW, body), f"resolves to a {why}" if why == "loopback" else why)
        assert_logged(running, read_log, body, "fhir_server_not_allowed")
    assert listener.connections == []
    assert backend.connected == [] and backend.stopped == []


def test_a_name_that_changes_its_answer_is_checked_on_every_connection(
    listener: Listener, service_factory: StartService, read_log: ReadLog
) -> None:
    """The first lookup gives an allowed address, later ones loopback: the connections made go to the address
    each check allowed (never loopback), and the loopback ones are refused."""
    answers = [["10.20.30.40"]]

    def flipping(host: str, port: int, *rest: Any) -> list[tuple[Any, ...]]:
        table = {"fhir.flip.test": answers.pop() if answers else ["127.0.0.1"]}
        return Resolver(table)(host, port, *rest)

    running = service_factory()
    backend = guard_with(running, flipping)
    body = body_for(f"http://fhir.flip.test:{listener.port}/fhir")

    assert_refused(running.post(PATIENT_VIEW, body), "loopback")

    assert backend.stopped == [("10.20.30.40", listener.port)]  # the checked address, not the name
    assert backend.connected == [] and listener.connections == []
    assert_logged(running, read_log, body, "fhir_server_not_allowed")


# -- an issuer with fhir_servers: the list -------------------------------------------------------------------


def test_a_listed_fhir_server_is_fetched_with_the_token(
    service_trusting: StartService, fhir_server_factory: StartFhir, database_url: str, read_log: ReadLog
) -> None:
    """req 61: a server under a listed prefix is fetched, with the access token on every call (loopback
    is allowed here because the administrator listed it)."""
    resources = record()
    server = fhir_server_factory(resources, token=FHIR_TOKEN)
    running = service_trusting(server.base, database_url=database_url)
    body = fetched_from(patient_view_of(resources), server.base)

    assert len(assert_cards_response(running.post(PATIENT_VIEW, body))) == 1

    assert len(server.peer.requests) == len(PREFETCH_TEMPLATES)
    assert {r.headers["authorization"] for r in server.peer.requests} == {f"Bearer {FHIR_TOKEN}"}
    assert_logged(running, read_log, body, "cards", 200)


UNLISTED = {
    "other port": ("{other}/fhir", "{base}"),
    "other path": ("{base}", "{root}/r4"),
    "prefix without a segment boundary": ("{root}/fhirx", "{base}"),
    "look-alike host": ("http://127.0.0.1.evil.test:{port}/fhir", "{base}"),
    "other spelling of the host": ("http://localhost:{port}/fhir", "{base}"),
    "user information": ("http://spine@127.0.0.1:{port}/fhir", "{base}"),
}


@pytest.mark.parametrize("case", sorted(UNLISTED))
def test_a_server_not_on_the_list_is_refused_and_gets_nothing(
    case: str,
    service_trusting: StartService,
    fhir_server_factory: StartFhir,
    listener: Listener,
    database_url: str,
    read_log: ReadLog,
) -> None:
    """With a list, only matching URLs are fetched: other port, other path, a path that merely starts with the
    prefix's, a look-alike or differently spelled host, and userinfo are all refused; neither server hears of it."""
    server = fhir_server_factory(record(), token=FHIR_TOKEN)
    root = server.peer.url
    names = {"base": server.base, "root": root, "port": str(urlsplit(root).port), "other": listener.url}
    named, listed = (template.format(**names) for template in UNLISTED[case])
    running = service_trusting(listed, database_url=database_url)
    backend = guard_with(running)
    body = body_for(named)

    why = "user information" if case == "user information" else "not on the list of FHIR servers"
    assert_refused(running.post(PATIENT_VIEW, body), why)

    assert server.peer.requests == [] and listener.connections == []
    assert backend.connected == [] and backend.stopped == []
    assert_logged(running, read_log, body, "fhir_server_not_allowed")


def test_plain_http_is_refused_without_allow_http(
    service_factory: StartService, ehr: SigningEhr, listener: Listener, database_url: str, read_log: ReadLog
) -> None:
    """req 2, req 168: with allow_http false (the default) the EHR's token travels over TLS only: an http
    fhirServer is refused, for an issuer whose list is https-only and for one without a list."""
    listed = {"jwks": ehr.jwks, "fhir_servers": [f"https://127.0.0.1:{listener.port}/fhir"]}
    running = service_factory(database_url=database_url, allow_http=False, trusted_issuers={ehr.issuer: listed})
    body = body_for(f"{listener.url}/fhir")
    assert_refused(running.post(PATIENT_VIEW, body), "plain http")
    assert_logged(running, read_log, body, "fhir_server_not_allowed")

    unlisted = service_factory(database_url=database_url, allow_http=False)
    backend = guard_with(unlisted)
    body = body_for("http://fhir.hospital.example/r4")
    assert_refused(unlisted.post(PATIENT_VIEW, body), "plain http")
    assert_logged(unlisted, read_log, body, "fhir_server_not_allowed")

    assert listener.connections == [] and backend.stopped == []


def test_a_fetch_without_fhir_authorization_is_412_and_calls_nobody(
    service_trusting: StartService, fhir_server_factory: StartFhir, database_url: str, read_log: ReadLog
) -> None:
    """req 61: the service presents an access token with every FHIR call, so with a fhirServer but no
    fhirAuthorization it makes no call: 412 fhir_authorization_required. A complete prefetch needs none."""
    resources = record()
    server = fhir_server_factory(resources)
    running = service_trusting(server.base, database_url=database_url)
    body = fetched_from(patient_view_of(resources), server.base, token=None)

    response = running.post(PATIENT_VIEW, body)

    assert response.status_code == 412
    error = error_of(response)
    assert error["code"] == "fhir_authorization_required"
    assert "fhirAuthorization" in error["message"]
    assert server.peer.requests == []
    assert_logged(running, read_log, body, "fhir_authorization_required")

    complete = {**body, "hookInstance": str(uuid.uuid4()), "prefetch": prefetch_for(resources)}
    assert len(assert_cards_response(running.post(PATIENT_VIEW, complete))) == 1
    assert server.peer.requests == []


class NextLinkFhirServer(FhirServer):
    """A FHIR server whose Condition search names a `next` page at `elsewhere`."""

    def __init__(self, resources: list[dict[str, Any]], elsewhere: Callable[[FhirServer], str]) -> None:
        super().__init__(resources, token=FHIR_TOKEN)
        self.elsewhere = elsewhere

    def _handle(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, Any]:
        status, body = super()._handle(path, query, headers)
        if status == 200 and path == "/fhir/Condition":
            body["link"] = [{"relation": "next", "url": self.elsewhere(self)}]
        return status, body


@pytest.mark.parametrize(
    ("where", "note"),
    [
        ("loopback, another port", "A further page of 'conditions' on another server was not fetched."),
        (
            "same server, outside the listed path",
            "A further page of 'conditions' outside the FHIR server this service may read was not fetched.",
        ),
    ],
)
def test_a_next_link_the_policy_refuses_is_not_followed(
    where: str, note: str, service_trusting: StartService, listener: Listener, read_log: ReadLog
) -> None:
    """A `next` link passes the same rule as the fhirServer: to a loopback listener on another port it is not
    followed (not just because it is another origin), nor to a path of the same server outside the prefix."""
    resources = record()
    if where.startswith("loopback"):
        server = NextLinkFhirServer(resources, lambda _: f"{listener.url}/fhir/Condition?patient=x&_offset=50")
    else:
        server = NextLinkFhirServer(resources, lambda s: f"{s.peer.url}/private/Condition?patient=x&_offset=50")
    with server.peer.running():
        running = service_trusting(server.base)
        body = fetched_from(patient_view_of(resources), server.base)
        response = running.post(PATIENT_VIEW, body)

    assert len(assert_cards_response(response)) == 1
    assert listener.connections == []
    assert [r.path for r in server.peer.requests].count("/fhir/Condition") == 1
    assert not [r for r in server.peer.requests if r.path.startswith("/private")]
    notes = read_log(running).decision(hook_instance=body["hookInstance"])["assessment"]["notes"]
    assert note in notes


def test_a_redirect_from_the_fhir_server_is_not_followed(
    service_trusting: StartService, database_url: str, read_log: ReadLog
) -> None:
    """A 3xx is a failed fetch: the token is not carried to the Location, even one on the issuer's list."""
    with Listener().running() as elsewhere:
        redirecting = Listener(302, {"Location": f"{elsewhere.url}/fhir/Patient/1"})
        with redirecting.running():
            running = service_trusting(f"{redirecting.url}/fhir", f"{elsewhere.url}/fhir", database_url=database_url)
            body = body_for(f"{redirecting.url}/fhir")
            response = running.post(PATIENT_VIEW, body)

    assert response.status_code == 412
    assert error_of(response)["code"] == "prefetch_unavailable"
    assert len(redirecting.requests) == len(PREFETCH_TEMPLATES)
    assert elsewhere.connections == []
    assert_logged(running, read_log, body, "prefetch_unavailable")
