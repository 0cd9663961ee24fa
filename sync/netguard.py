"""Where Caly's outgoing HTTP may go, and how much of a server's answer it will take.

Users hand Caly URLs. Unchecked, a URL, a redirect or a DNS answer that changes between the check
and the connection could point a worker at this machine, the internal network or a cloud metadata
service (169.254.169.254). So: only http and https; a host whose name resolves to a loopback,
private, link-local, site-local, unspecified, multicast or reserved address is refused, at the
API and again for every connection the shared HTTP session opens (`GuardedResolver`), so a
rebinding DNS answer meets the same rule. `CALY_ALLOW_PRIVATE_URLS` lifts the address rule
(development, tests).

A server may also answer forever, slowly, or with gigabytes. Each request has one deadline,
CALY_HTTP_DEADLINE_SECONDS from its start (redirects included): until the status line and headers
are in, a timer shuts the socket when it passes; the body is then read through `GuardedBody`,
under a size limit and with what is left of the deadline for waiting on it. Whatever the HTTP
client raises on the way becomes a ProviderError with a readable message.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from urllib.parse import urlsplit

import niquests
from django.conf import settings
from django.core.exceptions import ValidationError
from niquests.packages.urllib3 import exceptions as urllib3_errors
from niquests.packages.urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from niquests.packages.urllib3.contrib.resolver.system import SystemResolver

from sync.providers.base import ConnectError, ProviderError, TransientError

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


class UnreadableResponse(ProviderError):
    """A server's answer could not be read as HTTP (bad compression, a request it cannot take)."""


class BrokenOffResponse(TransientError):
    """A server broke off its answer (connection closed early, broken chunked encoding)."""


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
    # fec0::/10, the withdrawn IPv6 site-local range, is still routed inside some networks;
    # Python 3.11 counts it as global.
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
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


# --- one deadline per request ---------------------------------------------------------------
class Deadline:
    """CALY_HTTP_DEADLINE_SECONDS from the start of one request, its redirects included."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = time.monotonic()
        self.cut = False  # a socket was shut because the deadline passed

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def too_slow(self, host: str) -> ResponseTooSlow:
        return ResponseTooSlow(
            f"The server at {host} took more than {self.seconds:g} s to send one response; gave up."
        )


_current = threading.local()


def _deadline() -> Deadline:
    # Requests that do not come through GuardedSession.request (none in Caly) get their own.
    return getattr(_current, "deadline", None) or Deadline(settings.CALY_HTTP_DEADLINE_SECONDS)


class _SocketCutter:
    """Shuts a connection's socket when the deadline passes while Caly waits for the server.

    The read timeout only bounds the gap between two packets, so a server that trickles its
    status line and headers would hold a worker (or a web request) for as long as it likes; the
    HTTP client has no overall limit, and recommends a watcher thread (urllib3's Timeout notes).
    """

    def __init__(self, connection, deadline: Deadline):
        self._connection = connection
        self._deadline = deadline
        self._lock = threading.Lock()
        self._done = False
        self._timer: threading.Timer | None = None

    def _arm(self, seconds: float) -> None:
        self._timer = threading.Timer(max(seconds, 0.0), self._cut)
        self._timer.daemon = True
        self._timer.start()

    def __enter__(self):
        self._arm(self._deadline.seconds - self._deadline.elapsed())
        return self

    def __exit__(self, *exc_info):
        with self._lock:
            self._done = True
            if self._timer is not None:
                self._timer.cancel()

    def _cut(self) -> None:
        with self._lock:
            if self._done:
                return
            sock = getattr(self._connection, "sock", None)
            if sock is None:  # still connecting (the connect timeout bounds that): look again
                self._arm(0.05)
                return
            self._deadline.cut = True
            # Below TLS: SSLSocket.shutdown would drop its TLS state under the reading thread.
            # The blocked read then returns, and the request fails in the caller's thread.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _DeadlinePool:
    """Connection pool part: every request on a connection, from connecting to the last header
    line, runs under a `_SocketCutter`; the body is left to GuardedBody."""

    def _make_request(self, conn, *args, **kwargs):
        with _SocketCutter(conn, _deadline()):
            return super()._make_request(conn, *args, **kwargs)


class _GuardedHTTPPool(_DeadlinePool, HTTPConnectionPool):
    pass


class _GuardedHTTPSPool(_DeadlinePool, HTTPSConnectionPool):
    pass


# --- response bodies ------------------------------------------------------------------------
class GuardedBody:
    """Stands in for a response's raw body and stops reading past the limits.

    `limit` bytes at most (decoded, so a compression bomb counts at its real size), and what is
    left of the request's deadline for waiting on the body: the session's timeout only bounds
    the gap between two packets, so a server that trickles a byte a second would otherwise hold
    a worker forever. Time the reader spends between reads (parsing, writing to the database)
    does not count. Errors of the HTTP client become ProviderErrors. Everything else is the
    wrapped object's.
    """

    def __init__(self, raw, *, limit: int, host: str, deadline: Deadline):
        self._raw = raw
        self._limit = limit
        self._host = host
        self._size = 0
        self._deadline = deadline
        # Connecting and waiting for the headers used part of the deadline already.
        self._waited = deadline.elapsed()

    def __getattr__(self, name):
        return getattr(self._raw, name)

    def _check(self, data: bytes, waited: float) -> bytes:
        self._size += len(data)
        self._waited += waited
        if self._size > self._limit:
            self._raw.close()
            raise _too_large(self._host, self._limit)
        if self._waited > self._deadline.seconds:
            self._raw.close()
            raise self._deadline.too_slow(self._host)
        return data

    def _call(self, read, *args, **kwargs):
        """One read of the wrapped body, timed, its errors in Caly's words.

        Read timeouts and TLS errors are left for niquests to raise as its ConnectionError,
        which callers report as the server not answering.
        """
        started = time.monotonic()
        try:
            data = read(*args, **kwargs)
        except urllib3_errors.HTTPError as exc:
            if self._deadline.cut:
                raise self._deadline.too_slow(self._host) from None
            if isinstance(exc, (urllib3_errors.ReadTimeoutError, urllib3_errors.SSLError)):
                raise
            self._raw.close()
            if isinstance(exc, urllib3_errors.DecodeError):
                raise UnreadableResponse(
                    f"The server at {self._host} sent a compressed answer that does not decompress."
                ) from None
            raise BrokenOffResponse(
                f"The server at {self._host} broke off its answer (the connection closed early "
                "or its chunked encoding is broken)."
            ) from None
        return data if data is None else self._check(data, time.monotonic() - started)

    def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        return self._call(self._raw.read1, amt=amt or _READ_CHUNK, decode_content=decode_content)

    def stream(self, amt: int | None = _READ_CHUNK, decode_content: bool | None = None):
        chunks = self._raw.stream(amt or _READ_CHUNK, decode_content=decode_content)
        while (chunk := self._call(next, chunks, None)) is not None:
            yield chunk

    def read(self, amt: int | None = None, decode_content: bool | None = None, **kwargs) -> bytes:
        if amt is not None and amt >= 0:
            return self._call(self._raw.read, amt, decode_content=decode_content, **kwargs)
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
    response.raw = GuardedBody(response.raw, limit=limit, host=host, deadline=_deadline())
    return response


def _request_failed(exc: Exception, host: str) -> ProviderError:
    """What the HTTP client raised, other than timeouts and refused connections, in words."""
    if isinstance(exc, niquests.exceptions.ContentDecodingError):
        return UnreadableResponse(
            f"The server at {host} sent a compressed answer that does not decompress."
        )
    if isinstance(exc, (niquests.exceptions.ChunkedEncodingError, urllib3_errors.ProtocolError)):
        return BrokenOffResponse(f"The server at {host} broke off its answer.")
    if isinstance(exc, niquests.exceptions.InvalidHeader):
        return UnreadableResponse(
            f"A request to {host} could not be sent: a header (the username, perhaps) holds "
            "characters HTTP does not allow."
        )
    if isinstance(exc, ValueError):  # InvalidURL, MissingSchema, InvalidSchema
        return UnreadableResponse(f"The address of {host} (or a redirect from it) is not valid.")
    return UnreadableResponse(f"The request to {host} failed ({type(exc).__name__}).")


class GuardedSession(niquests.Session):
    """A niquests session that applies the rules above to every request and every redirect.

    Timeouts and refused connections (niquests' Timeout and ConnectionError) are left to the
    caller, which knows which server it was asking for and says so; every other error of the
    HTTP client comes out as a ProviderError.
    """

    def __init__(self, **kwargs):
        super().__init__(resolver=GuardedResolver(), **kwargs)
        # Environment proxies would connect on the user's behalf past the address rule, and
        # .netrc would hand this machine's credentials to whichever host a user names.
        self.trust_env = False
        self.max_redirects = MAX_REDIRECTS
        self.hooks["response"].append(_guard_body)
        for adapter in self.adapters.values():
            manager = getattr(adapter, "poolmanager", None)
            if manager is not None:
                manager.pool_classes_by_scheme = {
                    "http": _GuardedHTTPPool,
                    "https": _GuardedHTTPSPool,
                }

    def send(self, request, **kwargs):
        # Called for the first request and again for each redirect it leads to; the addresses
        # are checked by the resolver when a connection is opened.
        check_url(request.url, resolve=False)
        return super().send(request, **kwargs)

    def request(self, method, url, *args, **kwargs):
        deadline = Deadline(settings.CALY_HTTP_DEADLINE_SECONDS)
        outer, _current.deadline = getattr(_current, "deadline", None), deadline
        try:
            return super().request(method, url, *args, **kwargs)
        except niquests.exceptions.TooManyRedirects:
            raise TooManyRedirects(
                f"The server at {_host(url)} redirected more than {self.max_redirects} times; "
                "gave up."
            ) from None
        except (niquests.exceptions.Timeout, niquests.exceptions.ConnectionError):
            if deadline.cut:
                raise deadline.too_slow(_host(url)) from None
            raise
        except (niquests.exceptions.RequestException, urllib3_errors.HTTPError) as exc:
            raise _request_failed(exc, _host(url)) from None
        finally:
            _current.deadline = outer
