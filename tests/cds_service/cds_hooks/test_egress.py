"""The egress policy on its own: prefix matching, the address rules, and the guarded backend and transport.

No test here sends traffic off the machine: names resolve through stand-in resolvers, connections to
anything but loopback go to a recording stand-in backend, and the only real peers listen on loopback.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpcore
import httpx
import pytest

from cds_service.cds_hooks.egress import (
    EgressPolicy,
    EgressRefused,
    GuardedBackend,
    address_problem,
    egress_client,
    prefix_matches,
    service_endpoints,
)
from cds_service.cds_hooks.fetch import FhirServerNotAllowed, PrefetchFetcher
from tests.support import Resolver, http_server


class FakeStream(httpcore.NetworkStream):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def close(self) -> None:
        pass


class RecordingBackend(httpcore.NetworkBackend):
    """Records the (host, port) it is asked to connect to and connects nowhere; `fail` hosts raise ConnectError."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail = fail

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **_: Any) -> httpcore.NetworkStream:
        self.calls.append((host, port))
        if host in self.fail:
            raise httpcore.ConnectError(f"{host} does not answer")
        return FakeStream(host, port)


# -- prefix matching --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "prefix"),
    [
        ("https://a.org/fhir/Patient/1", "https://a.org/fhir"),
        ("https://a.org/fhir", "https://a.org/fhir"),
        ("https://a.org/fhir/", "https://a.org/fhir"),
        ("https://a.org/fhir/Patient/1", "https://a.org/fhir/"),
        ("https://a.org/fhir?patient=1", "https://a.org/fhir"),
        ("https://A.ORG/fhir/Condition", "https://a.org/fhir"),  # host case-insensitive
        ("HTTPS://a.org/fhir/Condition", "https://a.org/fhir"),  # scheme case-insensitive
        ("https://a.org:443/fhir/Condition", "https://a.org/fhir"),  # the default port written out
        ("https://a.org/fhir/Condition", "https://a.org:443/fhir"),
        ("http://a.org:80/r4/Patient/1", "http://a.org/r4"),
        ("https://a.org:8443/fhir/Patient/1", "https://a.org:8443/fhir"),
        ("https://a.org/anything/at/all", "https://a.org"),
        ("https://a.org/anything", "https://a.org/"),
        ("http://127.0.0.1:8080/fhir/Patient/1", "http://127.0.0.1:8080/fhir"),
        ("https://[2001:db8::1]/fhir/Patient/1", "https://[2001:DB8::1]/fhir"),
    ],
)
def test_urls_under_a_prefix_match(url: str, prefix: str) -> None:
    assert prefix_matches(url, prefix)


@pytest.mark.parametrize(
    ("url", "prefix"),
    [
        ("https://a.org/fhirx", "https://a.org/fhir"),  # not at a segment boundary
        ("https://a.org/fhirx/Patient/1", "https://a.org/fhir"),
        ("https://a.org.evil.com/fhir/Patient/1", "https://a.org/fhir"),  # look-alike host
        ("https://evil-a.org/fhir", "https://a.org/fhir"),
        ("https://evil.com/https://a.org/fhir", "https://a.org/fhir"),
        ("https://a.org:8443/fhir/Patient/1", "https://a.org/fhir"),  # other port
        ("https://a.org/fhir/Patient/1", "https://a.org:8443/fhir"),
        ("http://a.org/fhir/Patient/1", "https://a.org/fhir"),  # other scheme
        ("https://a.org:80/fhir", "http://a.org/fhir"),
        ("https://a.org/FHIR/Patient/1", "https://a.org/fhir"),  # paths are case-sensitive
        ("https://a.org/other", "https://a.org/fhir"),
        ("https://a.org", "https://a.org/fhir"),
        ("https://a.org/fhir/../admin", "https://a.org/fhir"),  # dot segments are removed first
        ("https://a.org/fhir/Patient/../../admin", "https://a.org/fhir"),
        ("https://a.org/fhir%2F..%2Fadmin", "https://a.org/fhir"),  # compared percent-encoded
        ("https://127.0.0.2:8080/fhir", "https://127.0.0.1:8080/fhir"),
        ("not a url at all", "https://a.org/fhir"),
    ],
)
def test_urls_outside_a_prefix_do_not_match(url: str, prefix: str) -> None:
    assert not prefix_matches(url, prefix)


def listed_policy(*prefixes: str, allow_http: bool = False) -> EgressPolicy:
    return EgressPolicy({"https://ehr.example.org": list(prefixes)}, allow_http=allow_http)


def test_a_listed_issuer_may_name_only_its_servers() -> None:
    policy = listed_policy("https://fhir.hospital.org/r4", "https://10.2.3.4:8443/fhir")
    assert policy.listed("https://ehr.example.org")
    assert policy.check_url("https://fhir.hospital.org/r4/Patient/1", "https://ehr.example.org").host == "fhir.hospital.org"
    policy.check_url("https://10.2.3.4:8443/fhir/Condition?patient=1", "https://ehr.example.org")
    for url in ("https://fhir.hospital.org/r5", "https://fhir.hospital.org.evil.com/r4", "https://10.2.3.4/fhir"):
        with pytest.raises(
            EgressRefused, match=r"not on the list of FHIR servers configured for issuer https://ehr\.example\.org"
        ):
            policy.check_url(url, "https://ehr.example.org")


def test_a_listed_loopback_server_is_allowed_because_the_administrator_listed_it() -> None:
    policy = listed_policy("http://127.0.0.1:8080/fhir", allow_http=True)
    policy.check_url("http://127.0.0.1:8080/fhir/Patient/1", "https://ehr.example.org")
    with pytest.raises(EgressRefused, match="not on the list"):
        policy.check_url("http://127.0.0.1:8081/fhir/Patient/1", "https://ehr.example.org")


def test_another_issuers_list_does_not_apply() -> None:
    policy = EgressPolicy({"https://a.example": ["http://127.0.0.1:8080/fhir"], "https://b.example": []}, allow_http=True)
    assert not policy.listed("https://b.example")
    with pytest.raises(EgressRefused, match="loopback"):
        policy.check_url("http://127.0.0.1:8080/fhir/Patient/1", "https://b.example")
    with pytest.raises(EgressRefused, match="loopback"):
        policy.check_url("http://127.0.0.1:8080/fhir/Patient/1", "https://unknown.example")


@pytest.mark.parametrize("issuer_list", [[], ["https://fhir.hospital.org/r4", "http://fhir.hospital.org/r4"]])
def test_plain_http_is_refused_unless_allowed(issuer_list: list[str]) -> None:
    strict = EgressPolicy({"iss": issuer_list}, allow_http=False)
    with pytest.raises(EgressRefused, match="plain http"):
        strict.check_url("http://fhir.hospital.org/r4/Patient/1", "iss")
    relaxed = EgressPolicy({"iss": issuer_list}, allow_http=True)
    assert relaxed.check_url("http://fhir.hospital.org/r4/Patient/1", "iss").scheme == "http"


@pytest.mark.parametrize("issuer_list", [[], ["https://fhir.hospital.org/r4"]])
@pytest.mark.parametrize(
    "url",
    [
        "https://user@fhir.hospital.org/r4/Patient/1",
        "https://user:secret@fhir.hospital.org/r4",
        "https://:x@fhir.hospital.org/r4",
    ],
)
def test_userinfo_is_refused(issuer_list: list[str], url: str) -> None:
    with pytest.raises(EgressRefused, match="user information"):
        EgressPolicy({"iss": issuer_list}).check_url(url, "iss")


@pytest.mark.parametrize("url", ["ftp://fhir.hospital.org/r4", "fhir.hospital.org/r4", "https:///r4"])
def test_what_is_not_an_absolute_http_url_is_refused(url: str) -> None:
    with pytest.raises(EgressRefused):
        EgressPolicy({}).check_url(url, "iss")


# -- address rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped forms
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("::ffff:224.0.0.1", "multicast"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
    ],
)
def test_addresses_refused_to_an_unlisted_issuer(address: str, kind: str) -> None:
    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None and kind in problem


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",  # hospital networks: private ranges stay allowed
        "172.16.0.10",
        "172.31.255.1",
        "192.168.1.20",
        "100.64.0.1",
        "fd00::1",
        "fc00::10",
        "::ffff:10.0.0.1",
        "93.184.216.34",
        "2606:4700::1111",
    ],
)
def test_private_and_public_addresses_are_allowed(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


def test_service_endpoints_are_read_from_redis_and_database_urls() -> None:
    assert service_endpoints(
        "redis://cache.internal:6380/0",
        "rediss://:secret@Cache.Internal/1",
        "postgresql+psycopg://spine:pw@db.internal/spine",
        "postgresql://db.internal:6543/spine",
        "sqlite:////srv/spine.sqlite3",
        "redis://host:notaport/0",
        None,
        "",
    ) == [("cache.internal", 6380), ("cache.internal", 6379), ("db.internal", 5432), ("db.internal", 6543)]


def test_the_services_own_redis_and_database_are_refused_by_address_and_by_name() -> None:
    resolver = Resolver({"cache.internal": ["10.0.0.5"], "db.internal": ["10.0.0.6"]})
    policy = EgressPolicy(
        {}, own_endpoints=service_endpoints("redis://cache.internal:6379/0", "postgresql://u@db.internal/x"), resolver=resolver
    )
    own = "the service's own Redis or database"
    assert policy.address_problem(ipaddress.ip_address("10.0.0.5"), 6379) == own
    assert policy.address_problem(ipaddress.ip_address("::ffff:10.0.0.5"), 6379) == own
    assert policy.address_problem(ipaddress.ip_address("10.0.0.6"), 5432) == own
    assert policy.address_problem(ipaddress.ip_address("10.0.0.9"), 6379, host="CACHE.internal") == own
    # the same hosts on other ports, and other hosts on those ports, are ordinary private addresses
    assert policy.address_problem(ipaddress.ip_address("10.0.0.5"), 8080) is None
    assert policy.address_problem(ipaddress.ip_address("10.0.0.7"), 6379) is None
    with pytest.raises(EgressRefused, match="own Redis or database"):  # an address literal is refused before connecting
        policy.check_url("https://10.0.0.5:6379/", "iss")
    literal = EgressPolicy({}, own_endpoints=[("127.0.0.1", 6379)])
    assert literal.address_problem(ipaddress.ip_address("127.0.0.1"), 6379) == own


def test_every_resolved_address_is_checked() -> None:
    resolver = Resolver({"mixed.test": ["10.0.0.7", "127.0.0.1"], "fine.test": ["10.0.0.7", "10.0.0.8", "10.0.0.7"]})
    policy = EgressPolicy({}, resolver=resolver)
    with pytest.raises(EgressRefused, match="resolves to a loopback address"):
        policy.checked_addresses("mixed.test", 443)
    assert [str(a) for a in policy.checked_addresses("fine.test", 443)] == ["10.0.0.7", "10.0.0.8"]
    with pytest.raises(httpcore.ConnectError):  # an unknown name is an unreachable server, not a refused one
        policy.checked_addresses("unknown.test", 443)


# -- the guarded backend ------------------------------------------------------------------------------


def test_the_backend_connects_to_the_checked_address_not_the_name() -> None:
    """No DNS rebinding: the wrapped backend gets the address literal that was checked, and never the name."""
    inner = RecordingBackend()
    resolver = Resolver({"fhir.hospital.test": ["10.0.0.7"]})
    backend = GuardedBackend(EgressPolicy({}, resolver=resolver), inner)
    stream = backend.connect_tcp("fhir.hospital.test", 443, timeout=1)
    assert isinstance(stream, FakeStream) and (stream.host, stream.port) == ("10.0.0.7", 443)
    assert inner.calls == [("10.0.0.7", 443)]
    assert resolver.calls == ["fhir.hospital.test"]


@pytest.mark.parametrize(
    "host",
    ["rebound.test", "metadata.google.internal", "127.0.0.1", "169.254.169.254", "::1", "0.0.0.0", "2130706433", "localhost"],
)
def test_the_backend_refuses_before_connecting(host: str) -> None:
    inner = RecordingBackend()
    table = {"rebound.test": ["127.0.0.1"], "metadata.google.internal": ["169.254.169.254"], "localhost": ["127.0.0.1", "::1"]}
    table["2130706433"] = ["127.0.0.1"]  # what getaddrinfo makes of the decimal form
    backend = GuardedBackend(EgressPolicy({}, resolver=Resolver(table)), inner)
    with pytest.raises(EgressRefused):
        backend.connect_tcp(host, 80, timeout=1)
    assert inner.calls == []


def test_the_real_resolver_reads_decimal_ipv4_as_loopback() -> None:
    """With socket.getaddrinfo (no DNS query for a numeric host), 2130706433 is 127.0.0.1 and is refused."""
    inner = RecordingBackend()
    with pytest.raises(EgressRefused, match="loopback"):
        GuardedBackend(EgressPolicy({}), inner).connect_tcp("2130706433", 80, timeout=1)
    assert inner.calls == []


def test_each_connection_is_checked_again() -> None:
    """A name that first resolves to an allowed address and then to loopback is refused on the second connection."""
    answers = iter([["10.0.0.7"], ["127.0.0.1"]])
    inner = RecordingBackend()

    def flip(host: str, port: int, *_: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in next(answers)]

    backend = GuardedBackend(EgressPolicy({}, resolver=flip), inner)
    backend.connect_tcp("flip.test", 443)
    with pytest.raises(EgressRefused, match="loopback"):
        backend.connect_tcp("flip.test", 443)
    assert inner.calls == [("10.0.0.7", 443)]


def test_the_next_checked_address_is_tried_when_one_does_not_answer() -> None:
    inner = RecordingBackend(fail=("10.0.0.7",))
    backend = GuardedBackend(EgressPolicy({}, resolver=Resolver({"two.test": ["10.0.0.7", "10.0.0.8"]})), inner)
    assert backend.connect_tcp("two.test", 443).port == 443
    assert inner.calls == [("10.0.0.7", 443), ("10.0.0.8", 443)]
    with pytest.raises(httpcore.ConnectError):
        GuardedBackend(EgressPolicy({}, resolver=Resolver({"one.test": ["10.0.0.7"]})), inner).connect_tcp("one.test", 1)


def test_unix_sockets_are_refused() -> None:
    with pytest.raises(EgressRefused):
        GuardedBackend(EgressPolicy({}), RecordingBackend()).connect_unix_socket("/var/run/redis.sock")


# -- the transport and client, against loopback listeners --------------------------------------------


@contextmanager
def listener(status: int = 200, headers: dict[str, str] | None = None) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP listener answering `status`; yields its base URL and the request lines it received."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"{self.headers.get('Host')} {self.path}")
            body = b'{"resourceType": "Bundle", "type": "searchset", "total": 0}'
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Handler) as url:
        yield url, seen


class LoopbackAllowed(EgressPolicy):
    """The address rules with loopback let through, to see a checked connection reach a real listener."""

    def address_problem(self, address: Any, port: int, host: str | None = None) -> str | None:
        return None if address.is_loopback else super().address_problem(address, port, host)


def test_a_checked_connection_reaches_the_resolved_address_with_the_original_host_header() -> None:
    with listener() as (url, seen):
        port = httpx.URL(url).port
        policy = LoopbackAllowed({}, allow_http=True, resolver=Resolver({"fhir.hospital.test": ["127.0.0.1"]}))
        with egress_client(policy, timeout=5, check_addresses=True) as client:
            assert client.get(f"http://fhir.hospital.test:{port}/fhir/Patient/1").status_code == 200
    assert seen == [f"fhir.hospital.test:{port} /fhir/Patient/1"]


def test_the_guarded_client_refuses_loopback_on_connecting() -> None:
    with listener() as (url, seen), egress_client(EgressPolicy({}, allow_http=True), timeout=5, check_addresses=True) as client:
        port = httpx.URL(url).port
        for target in (url, f"http://localhost:{port}", f"http://2130706433:{port}", f"http://0.0.0.0:{port}"):
            with pytest.raises(EgressRefused):
                client.get(target + "/fhir/Patient/1")
    assert seen == []


def test_environment_proxies_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    with listener() as (proxy, via_proxy), listener() as (target, direct):
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with egress_client(EgressPolicy({}, allow_http=True), timeout=5, check_addresses=False) as client:
            assert client.get(target + "/fhir/Patient/1").status_code == 200
    assert via_proxy == [] and len(direct) == 1


def test_redirects_are_not_followed() -> None:
    with listener() as (elsewhere, followed):
        location = {"Location": elsewhere + "/fhir/Patient/1"}
        with (
            listener(302, location) as (redirecting, seen),
            egress_client(EgressPolicy({}, allow_http=True), timeout=5, check_addresses=False) as client,
        ):
            response = client.get(redirecting + "/fhir/Patient/1")
    assert response.status_code == 302 and len(seen) == 1
    assert followed == []
    with pytest.raises(httpx.HTTPStatusError):
        response.raise_for_status()


# -- next links ---------------------------------------------------------------------------------------


def fetcher(policy: EgressPolicy) -> PrefetchFetcher:
    return PrefetchFetcher(1.0, 3, policy, network_backend=RecordingBackend())


@pytest.mark.parametrize(
    ("link", "followed"),
    [
        ("https://fhir.hospital.org/r4/Condition?page=2", True),
        ("http://fhir.hospital.org/r4/Condition?page=2", False),  # plain http
        ("https://user@fhir.hospital.org/r4/Condition?page=2", False),
        ("https://fhir.hospital.org/admin/Condition?page=2", False),  # same server, outside the prefix
        ("https://fhir.hospital.org:8443/r4/Condition?page=2", False),
        ("https://127.0.0.1/r4/Condition?page=2", False),
        ("https://elsewhere.org/r4/Condition?page=2", False),
        ("/r4/Condition?page=2", False),
    ],
)
def test_next_links_pass_the_policy_and_stay_on_the_server(link: str, followed: bool) -> None:
    policy = EgressPolicy({"iss": ["https://fhir.hospital.org/r4"]}, allow_http=False)
    base = httpx.URL("https://fhir.hospital.org/r4")
    url, note = fetcher(policy)._next(link, "conditions", base, "iss")
    assert (url is not None) == followed
    assert (note is None) == followed


def test_a_context_value_cannot_walk_a_prefetch_url_out_of_a_listed_prefix() -> None:
    """patientId "../../admin" would make Patient/../../admin: dot segments are removed before matching, so the
    URL leaves https://fhir.hospital.org/r4 and the call is refused before any connection."""
    backend = RecordingBackend()
    policy = EgressPolicy({"iss": ["https://fhir.hospital.org/r4"]})
    fetcher = PrefetchFetcher(1.0, 3, policy, network_backend=backend)
    with pytest.raises(FhirServerNotAllowed) as refused:
        fetcher.complete(
            {"patient": "Patient/{{context.patientId}}"},
            {"patientId": "../../admin"},
            {},
            "https://fhir.hospital.org/r4",
            "token",
            "iss",
        )
    assert refused.value.status == 412 and refused.value.details == {"keys": ["patient"]}
    assert "not on the list" in refused.value.message
    assert backend.calls == []
