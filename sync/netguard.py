"""Where Caly's outgoing HTTP may go, and how much of a server's answer it will take.

Users hand Caly URLs. Unchecked, a URL, a redirect or a DNS answer that changes between the check
and the connection could point a worker at this machine, the internal network or a cloud metadata
service (169.254.169.254). So: only http and https; a host whose name resolves to a loopback,
private, link-local, unspecified, multicast or reserved address is refused, at the API and again
for every connection the shared HTTP session opens (`GuardedResolver`), so a rebinding DNS answer
meets the same rule. `CALY_ALLOW_PRIVATE_URLS` lifts the address rule (development, tests).

A server may also answer forever, slowly, or with gigabytes: every response body is read through
`GuardedBody`, under a size limit and a limit on the time spent waiting for it.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urlsplit

import niquests
from django.conf import settings
from django.core.exceptions import ValidationError
from niquests.packages.urllib3.contrib.resolver.system import SystemResolver

from sync.providers.base import ConnectError, ProviderError

ALLOWED_SCHEMES = frozenset({"http", "https"})
# NAT64 (RFC 6052) carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_READ_CHUNK = 64 * 1024
MAX_REDIRECTS = 10

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeURL(ConnectError):
    """The URL, a redirect or the address its host resolves to is one Caly does not connect to."""


class ResponseTooLarge(ProviderError):
    """A server sent more in one response than Caly reads (CALY_HTTP_MAX_*_BYTES)."""


class ResponseTooSlow(ProviderError):
    """A server made Caly wait longer than CALY_HTTP_DEADLINE_SECONDS for one response."""


class TooManyRedirects(ProviderError):
    """A server sent Caly round in redirects."""


# --- addresses ------------------------------------------------------------------------------
def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64)."""
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        found.append(ip.teredo[1])
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def address_is_public(ip: IPAddress) -> bool:
    """True for an address on the public internet, the only kind a user's URL may reach."""
    if isinstance(ip, ipaddress.IPv6Address) and not all(
        address_is_public(v4) for v4 in _embedded_ipv4(ip)
    ):
        return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
    )


def _parse_address(text: str) -> IPAddress:
    # An IPv6 link-local answer may carry a zone ("fe80::1%eth0").
    return ipaddress.ip_address(text.split("%", 1)[0])


def _refuse_private(host: str, addresses: list[str]) -> None:
    if settings.CALY_ALLOW_PRIVATE_URLS:
        return
    for address in addresses:
        if not address_is_public(_parse_address(address)):
            where = host if host.strip("[]") == address else f"{host} (resolves to {address})"
            raise UnsafeURL(
                f"{where} is on a loopback, private or link-local network; Caly only connects "
                "to public addresses."
            )


# --- URLs -----------------------------------------------------------------------------------
def check_url(url: str, *, resolve: bool = True) -> None:
    """Raise UnsafeURL unless `url` is http(s) and its host resolves only to public addresses.

    A name that does not resolve is let through: the connection attempt reports it in its own
    words, and the connection is guarded again anyway. `resolve=False` checks the URL alone
    (the session does, since its resolver checks the addresses it connects to).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeURL("The URL is not valid.") from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise UnsafeURL("Only http and https URLs can be used.")
    host = parts.hostname
    if not host:
        raise UnsafeURL("The URL has no host name.")
    if settings.CALY_ALLOW_PRIVATE_URLS or not resolve:
        return
    try:
        infos = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except UnicodeError:
        raise UnsafeURL("The URL's host name is not valid.") from None
    except (socket.gaierror, OSError):
        return
    _refuse_private(host, [info[4][0] for info in infos])


def validate_url(value: str) -> None:
    """Field validator for URLs users give Caly: no credentials inside, safe to connect to."""
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValidationError("Enter a valid URL.") from None
    if parts.username is not None or parts.password is not None:
        # The message must not echo the URL: it carries the password.
        raise ValidationError("Put the username and password in their own fields, not in the URL.")
    try:
        check_url(value)
    except UnsafeURL as exc:
        raise ValidationError(str(exc)) from None


class GuardedResolver(SystemResolver):
    """The system resolver, refusing names that resolve to non-public addresses.

    Every connection of the shared session resolves through here and connects only to what was
    checked, so a name that resolves to a public address for the check and a private one for the
    connection (DNS rebinding) gains nothing.
    """

    def getaddrinfo(self, host, port, family, type, proto=0, flags=0, **kwargs):
        records = super().getaddrinfo(host, port, family, type, proto, flags, **kwargs)
        name = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
        _refuse_private(name, [record[4][0] for record in records])
        return records


# --- response bodies ------------------------------------------------------------------------
class GuardedBody:
    """Stands in for a response's raw body and stops reading past the limits.

    `limit` bytes at most (decoded, so a compression bomb counts at its real size) and
    CALY_HTTP_DEADLINE_SECONDS spent waiting for the body in all: the session's timeout only
    bounds the gap between two packets, so a server that trickles a byte a second would
    otherwise hold a worker forever. Time the reader spends between reads (parsing, writing to
    the database) does not count. Everything else is the wrapped object's.
    """

    def __init__(self, raw, *, limit: int, host: str):
        self._raw = raw
        self._limit = limit
        self._host = host
        self._size = 0
        self._waited = 0.0

    def __getattr__(self, name):
        return getattr(self._raw, name)

    def _check(self, data: bytes, waited: float) -> bytes:
        self._size += len(data)
        self._waited += waited
        if self._size > self._limit:
            self._raw.close()
            raise _too_large(self._host, self._limit)
        if self._waited > settings.CALY_HTTP_DEADLINE_SECONDS:
            self._raw.close()
            raise ResponseTooSlow(
                f"The server at {self._host} took more than "
                f"{settings.CALY_HTTP_DEADLINE_SECONDS:g} s to send one response; gave up."
            )
        return data

    def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        started = time.monotonic()
        data = self._raw.read1(amt=amt or _READ_CHUNK, decode_content=decode_content)
        return self._check(data, time.monotonic() - started)

    def stream(self, amt: int | None = _READ_CHUNK, decode_content: bool | None = None):
        chunks = self._raw.stream(amt or _READ_CHUNK, decode_content=decode_content)
        while True:
            started = time.monotonic()
            chunk = next(chunks, None)
            if chunk is None:
                return
            yield self._check(chunk, time.monotonic() - started)

    def read(self, amt: int | None = None, decode_content: bool | None = None, **kwargs) -> bytes:
        if amt is not None and amt >= 0:
            started = time.monotonic()
            data = self._raw.read(amt, decode_content=decode_content, **kwargs)
            return self._check(data, time.monotonic() - started)
        return b"".join(self.stream(_READ_CHUNK, decode_content=decode_content))


def _too_large(host: str, limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"The server at {host} sent more than {limit / 2**20:g} MiB in one response; gave up."
    )


def _host(url: str | None) -> str:
    """host[:port] of a URL, never its userinfo."""
    return urlsplit(url or "").netloc.rpartition("@")[2] or "the server"


def _guard_body(response, stream: bool = False, **kwargs):
    """Response hook, before anything reads the body (redirect answers included).

    A body read whole into memory may hold CALY_HTTP_MAX_RESPONSE_BYTES; one the caller parses
    as it streams in (stream=True) may be longer, up to CALY_HTTP_MAX_STREAMED_BYTES.
    """
    if response.raw is None or isinstance(response.raw, GuardedBody):
        return response
    limit = (
        settings.CALY_HTTP_MAX_STREAMED_BYTES if stream else settings.CALY_HTTP_MAX_RESPONSE_BYTES
    )
    host = _host(response.url)
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        response.raw.close()
        raise _too_large(host, limit)
    response.raw = GuardedBody(response.raw, limit=limit, host=host)
    return response


class GuardedSession(niquests.Session):
    """A niquests session that applies the rules above to every request and every redirect."""

    def __init__(self, **kwargs):
        super().__init__(resolver=GuardedResolver(), **kwargs)
        # Environment proxies would connect on the user's behalf past the address rule, and
        # .netrc would hand this machine's credentials to whichever host a user names.
        self.trust_env = False
        self.max_redirects = MAX_REDIRECTS
        self.hooks["response"].append(_guard_body)

    def send(self, request, **kwargs):
        # Called for the first request and again for each redirect it leads to; the addresses
        # are checked by the resolver when a connection is opened.
        check_url(request.url, resolve=False)
        return super().send(request, **kwargs)

    def request(self, method, url, *args, **kwargs):
        try:
            return super().request(method, url, *args, **kwargs)
        except niquests.exceptions.TooManyRedirects:
            raise TooManyRedirects(
                f"The server at {_host(url)} redirected more than {self.max_redirects} times; "
                "gave up."
            ) from None
