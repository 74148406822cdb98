"""Where the service may send an EHR's FHIR access token: the egress policy for prefetch fetching.

A hook call names its own ``fhirServer`` and hands the service an access token for it. Unchecked, any
caller with a valid EHR JWT could point the service at an internal address (an admin port on loopback,
a cloud metadata endpoint, the service's own Redis) and have the service send the token, or any
request, there. This module decides which URLs an issuer's calls may have fetched, and checks the
address of every connection made for them.

Rules, for the ``fhirServer`` itself, every URL built from it and every Bundle ``next`` link:

* ``https`` only, unless ``Settings.allow_http`` is true (development against local peers).
* No user information in the URL (``https://user@host/...``).
* An issuer with ``fhir_servers`` (URL prefixes in its ``TrustedIssuer``): only URLs matching one of
  them. A URL matches a prefix when scheme and host are equal (case-insensitive, as httpx normalises
  them), the ports are equal (443 or 80 when absent), and the URL's path, still percent-encoded and
  after dot segments are removed, starts with the prefix's path at a segment boundary:
  ``https://a.org/fhir`` matches ``https://a.org/fhir`` and ``https://a.org/fhir/Patient/1``, never
  ``https://a.org/fhirx`` or ``https://a.org.evil.com/fhir``. The administrator listed these servers,
  so a listed loopback or private address is allowed, and no address rule applies to them.
* An issuer without a list: any host, provided every address it resolves to passes the address rules.
  Refused: loopback, link-local (which includes 169.254.169.254), unspecified (0.0.0.0/8, ``::``),
  multicast, reserved and broadcast addresses, the IPv4-mapped (``::ffff:a.b.c.d``) and NAT64
  (``64:ff9b::/96``) forms of these, the cloud metadata addresses (169.254.169.254, fd00:ec2::254,
  100.100.100.200), and the host:port of the service's own Redis and database (``redis_url``,
  ``database_url``). Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) stay allowed: hospital FHIR
  servers live there.

The address rules hold on the address actually connected to: `GuardedBackend` is an httpcore network
backend that resolves the host itself (with an injectable resolver, `socket.getaddrinfo` by default),
refuses the connection when any resolved address breaks a rule, and then connects to one of the checked
addresses, so DNS cannot answer one address to the check and another to the connection (rebinding).
It is checked for every new connection, so a kept-alive connection was checked when it was opened.
TLS still verifies the URL's host name (httpcore passes it as ``server_hostname``). `GuardedTransport`
installs a backend in an ``httpx.HTTPTransport``; `egress_client` builds the client: no environment
proxies or ``.netrc`` (``trust_env=False``) and no redirects (a 3xx is a failed fetch).

Refusals raise `EgressRefused`, whose ``reason`` says why without repeating the URL or any token.

Limits: a listed prefix is trusted as the administrator wrote it, including where its DNS name points;
the rules judge addresses, not what listens there, so an internal service on a private address (10/8,
172.16/12, 192.168/16) is reachable by a caller of an unlisted issuer unless it is the service's own
Redis or database; only the metadata addresses above are known; the service's Redis and database hosts
are resolved when a connection's port is one of theirs, so a database reached by a name that resolves
differently later is compared with its current addresses.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from cds_service.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# socket.getaddrinfo or a stand-in: called as resolver(host, port, 0, socket.SOCK_STREAM)
Resolver = Callable[[str, int, int, int], Sequence[tuple[Any, ...]]]

METADATA_ADDRESSES: frozenset[Address] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# default ports of the services the service itself talks to (SQLAlchemy and redis-py URL schemes)
_SERVICE_PORTS = {"redis": 6379, "rediss": 6379, "postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306}
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressRefused(Exception):
    """A URL or address the policy does not allow; `reason` completes "the fhirServer is not allowed: ..."."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped or NAT64 IPv6 address stands for."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def canonical(address: Address) -> Address:
    """IPv4-mapped and NAT64 IPv6 addresses as the IPv4 address they stand for; others unchanged."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return embedded
        if address.scope_id:
            return ipaddress.IPv6Address(int(address))
    return address


def address_problem(address: Address) -> str | None:
    """What kind of address this is when a FHIR server of an unlisted issuer may not be there; None when it may."""
    address = canonical(address)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified or (isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK):
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved or address == _BROADCAST:
        return "a reserved or broadcast address"
    return None


def service_endpoints(*urls: str | None) -> list[tuple[str, int]]:
    """(host, port) of the services behind these URLs (``redis://``, ``postgresql+psycopg://``...); others skipped."""
    endpoints = []
    for url in urls:
        if not url:
            continue
        parts = urlsplit(url)
        scheme = parts.scheme.split("+", 1)[0].lower()
        try:
            host, port = parts.hostname, parts.port or _SERVICE_PORTS.get(scheme)
        except ValueError:  # a port that is not a number, several hosts
            continue
        if host and port:
            endpoints.append((host.lower(), port))
    return endpoints


def _host(url: httpx.URL) -> str:
    """The host for comparisons: names lower-cased (httpx does it), IPv6 literals in their compressed form too."""
    literal = _literal(url.host)
    return literal.compressed if literal is not None else url.host.lower()


def _port(url: httpx.URL) -> int:
    return url.port or _DEFAULT_PORTS.get(url.scheme, 0)


def _path(url: httpx.URL) -> str:
    """The path as sent on the wire: percent-encoded, without the query."""
    return url.raw_path.split(b"?", 1)[0].decode("ascii")


@dataclass(frozen=True)
class Prefix:
    """A configured FHIR server prefix (``TrustedIssuer.fhir_servers``)."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, prefix: str) -> Prefix:
        url = httpx.URL(prefix)
        return cls(url.scheme, _host(url), _port(url), _path(url).rstrip("/"))

    def matches(self, url: httpx.URL) -> bool:
        if (url.scheme, _host(url), _port(url)) != (self.scheme, self.host, self.port):
            return False
        path = _path(url)
        return not self.path or path == self.path or path.startswith(self.path + "/")


def prefix_matches(url: str, prefix: str) -> bool:
    """Whether `url` is under the FHIR server prefix `prefix` (scheme, host, port, path at a segment boundary)."""
    try:
        return Prefix.parse(prefix).matches(httpx.URL(url))
    except httpx.InvalidURL:
        return False


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, _host(a), _port(a)) == (b.scheme, _host(b), _port(b))


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class EgressPolicy:
    """Per issuer, the URLs its access tokens may be sent to, and the address rules for issuers without a list."""

    def __init__(
        self,
        fhir_servers: Mapping[str, Sequence[str]],
        *,
        allow_http: bool = False,
        own_endpoints: Iterable[tuple[str, int]] = (),
        resolver: Resolver = socket.getaddrinfo,
    ) -> None:
        self._prefixes = {issuer: [Prefix.parse(p) for p in prefixes] for issuer, prefixes in fhir_servers.items() if prefixes}
        self.allow_http = allow_http
        self.own_endpoints = [(host.lower(), port) for host, port in own_endpoints]
        self.resolver = resolver

    @classmethod
    def from_settings(cls, settings: Settings, *, resolver: Resolver = socket.getaddrinfo) -> EgressPolicy:
        return cls(
            {name: issuer.fhir_servers for name, issuer in settings.trusted_issuers.items()},
            allow_http=settings.allow_http,
            own_endpoints=service_endpoints(settings.redis_url, settings.effective_database_url),
            resolver=resolver,
        )

    def listed(self, issuer: str) -> bool:
        """Whether the issuer has a list of FHIR servers (and so no address rules)."""
        return issuer in self._prefixes

    def check_url(self, url: str | httpx.URL, issuer: str) -> httpx.URL:
        """The URL parsed, or EgressRefused: the checks that need no connection (scheme, userinfo, prefixes, literals)."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise EgressRefused("it is not a valid URL") from None
        if parsed.scheme not in _DEFAULT_PORTS or not parsed.host:
            raise EgressRefused("it is not an absolute http(s) URL")
        if parsed.scheme == "http" and not self.allow_http:
            raise EgressRefused("it is plain http, and access tokens are sent only over https")
        if parsed.userinfo:
            raise EgressRefused("it carries user information (user@host)")
        prefixes = self._prefixes.get(issuer)
        if prefixes is not None:
            if not any(prefix.matches(parsed) for prefix in prefixes):
                raise EgressRefused(f"it is not on the list of FHIR servers configured for issuer {issuer}")
            return parsed
        literal = _literal(parsed.host)
        if literal is not None:  # an address literal is judged now; a name on every connection
            problem = self.address_problem(literal, _port(parsed))
            if problem:
                raise EgressRefused(f"its host is {problem}")
        return parsed

    def address_problem(self, address: Address, port: int, host: str | None = None) -> str | None:
        """Why (address, port), reached for `host`, is refused to an unlisted issuer; None when it is allowed."""
        if self._is_own_endpoint(canonical(address), port, host):
            return "the service's own Redis or database"
        return address_problem(address)

    def _is_own_endpoint(self, address: Address, port: int, host: str | None) -> bool:
        for own_host, own_port in self.own_endpoints:
            if own_port != port:
                continue
            if host is not None and host.lower() == own_host:
                return True
            own_literal = _literal(own_host)
            if own_literal is not None:
                if canonical(own_literal) == address:
                    return True
                continue
            try:
                infos = self.resolver(own_host, own_port, 0, socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                continue
            if any(_sockaddr_address(info) == address for info in infos):
                return True
        return False

    def checked_addresses(self, host: str, port: int) -> list[Address]:
        """Resolve `host` once; every address must pass the rules (EgressRefused), in resolver order, deduplicated."""
        try:
            infos = self.resolver(host, port, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve the FHIR server's host: {exc}") from exc
        addresses: list[Address] = []
        for info in infos:
            address = _sockaddr_address(info)
            if address is None:
                raise EgressRefused("its host resolves to something that is not an IP address")
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise httpcore.ConnectError("the FHIR server's host resolves to no address")
        for address in addresses:
            problem = self.address_problem(address, port, host)
            if problem:
                raise EgressRefused(f"its host resolves to {problem}")
        return addresses


def _sockaddr_address(info: tuple[Any, ...]) -> Address | None:
    """The address of one getaddrinfo entry (family, type, proto, canonname, sockaddr)."""
    try:
        return canonical(ipaddress.ip_address(info[4][0]))
    except (IndexError, TypeError, ValueError):
        return None


class GuardedBackend(httpcore.NetworkBackend):
    """An httpcore backend that connects only to addresses the policy's address rules allow.

    It resolves the host itself, refuses (EgressRefused) when any address breaks a rule, and then hands
    the checked address literal, not the name, to the wrapped backend, so nothing resolves it again.
    """

    def __init__(self, policy: EgressPolicy, inner: httpcore.NetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        failure: Exception | None = None
        for address in self.policy.checked_addresses(host, port):
            try:
                return self.inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # checked_addresses returns at least one address
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.NetworkStream:
        raise EgressRefused("it would be reached over a Unix socket")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with its connection pool rebuilt on `network_backend`; never through a proxy."""

    def __init__(
        self,
        network_backend: httpcore.NetworkBackend,
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=20)
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=network_backend,
        )


def egress_client(
    policy: EgressPolicy,
    *,
    timeout: float,
    check_addresses: bool,
    network_backend: httpcore.NetworkBackend | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.Client:
    """A client for FHIR calls: address rules on every connection when `check_addresses`, no proxies, no redirects.

    `network_backend` is the backend that finally connects (httpcore's own by default), for tests.
    """
    inner = network_backend or httpcore.SyncBackend()
    backend: httpcore.NetworkBackend = GuardedBackend(policy, inner) if check_addresses else inner
    return httpx.Client(
        transport=GuardedTransport(backend, verify=verify),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
