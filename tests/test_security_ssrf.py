"""Caly connects only to public addresses: URLs, every redirect and every DNS answer.

Tests may only talk to loopback, so two loopback servers stand in: one on 127.0.0.2 that these
tests declare "public", and a canary on 127.0.0.1 (loopback, refused) that must never be asked
anything. Private, link-local and metadata addresses are only classified, never contacted.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from calendars.models import Account
from sync import http, netguard
from sync.providers.base import ProviderError
from tests.support.caldav_servers import vevent
from tests.support.hostile_server import HostileCalDAV

STANDIN_PUBLIC = ipaddress.ip_address("127.0.0.2")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # These tests make users by the dozen; the production hasher's cost is not what they test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def guarded(settings, monkeypatch):
    """Production rules (no private URLs), with 127.0.0.2 playing a public address."""
    settings.CALY_ALLOW_PRIVATE_URLS = False
    real = netguard.address_is_public
    monkeypatch.setattr(netguard, "address_is_public", lambda ip: ip == STANDIN_PUBLIC or real(ip))
    http.close_pool()
    yield
    http.close_pool()


@pytest.fixture
def public_server():
    server = HostileCalDAV(host=str(STANDIN_PUBLIC))
    server.put("one.ics", vevent("one@example.com"))
    yield server
    server.stop()


@pytest.fixture
def canary():
    server = HostileCalDAV(host="127.0.0.1")
    yield server
    server.stop()


def _connect(api, url: str):
    return api.post(
        "/api/accounts/", {"provider": "caldav", "name": "x", "url": url}, format="json"
    )


# --- classification, no traffic -------------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "169.254.169.254",  # cloud metadata
        "0.0.0.0",
        "224.0.0.251",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fec0::1",  # IPv6 site-local, withdrawn but still routed on some networks
        "feff:ffff::1",  # the top of fec0::/10
        "ff02::1",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "2002:a00:1::",  # 6to4 around 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
    ],
)
def test_non_public_addresses_are_refused(address):
    assert not netguard.address_is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert netguard.address_is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("name", ["metadata.internal.test", "intranet.test"])
def test_names_resolving_to_private_addresses_are_refused(settings, monkeypatch, name):
    settings.CALY_ALLOW_PRIVATE_URLS = False
    answers = {"metadata.internal.test": "169.254.169.254", "intranet.test": "10.1.2.3"}
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, port, *a, **k: [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))
        ],
    )
    with pytest.raises(netguard.UnsafeURL, match="private"):
        netguard.check_url(f"https://{name}/dav/")


# --- the API --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/",
        "http://localhost:{port}/",
        "http://[::1]:{port}/",
        "http://0.0.0.0:{port}/",
        "http://2130706433:{port}/",  # 127.0.0.1 as one number
        "http://0x7f.1:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
    ],
)
def test_api_refuses_loopback_urls_before_any_connection(api, guarded, canary, url):
    port = canary.base_url.rsplit(":", 1)[1]
    response = _connect(api, url.format(port=port))
    assert response.status_code == 400, response.content
    assert set(response.json()) == {"url"}
    assert "public addresses" in response.json()["url"][0]
    assert canary.requests == []
    assert not Account.objects.exists()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.2/", "ftp://127.0.0.2/"])
def test_api_refuses_other_schemes(api, guarded, url):
    response = _connect(api, url)
    assert response.status_code == 400
    assert "url" in response.json()


def test_a_public_server_is_accepted(api, guarded, public_server):
    response = _connect(api, public_server.url)
    assert response.status_code == 201, response.json()


def test_a_redirect_to_a_private_address_is_refused(api, guarded, public_server, canary):
    public_server.misbehave("redirect", target=canary.base_url)
    response = _connect(api, public_server.url)
    assert response.status_code == 400
    assert "public addresses" in response.json()["url"][0]
    assert public_server.requests, "the public server was asked"
    assert canary.requests == [], "the redirect was never followed"


def test_a_redirect_in_a_later_sync_goes_nowhere(guarded, public_server, canary):
    """Syncs send through the same guarded session: a redirect there leads nowhere either."""
    from sync.providers.caldav import CalDAVProvider

    provider = CalDAVProvider(url=public_server.url)
    assert provider.discover()
    public_server.misbehave("redirect", target=canary.base_url, on="calendars")
    with pytest.raises(ProviderError):
        CalDAVProvider(url=public_server.url, home_url=provider.home_url).discover()
    assert canary.requests == []


def test_dns_rebinding_meets_the_rule_at_connect_time(guarded, monkeypatch, canary):
    """A name that is public while it is checked and private when connected to gets nowhere:
    the connection resolves through the guard and connects only to what the guard passed."""
    real = socket.getaddrinfo
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.test":
            lookups.append(host)
            host = "127.0.0.2" if len(lookups) == 1 else "127.0.0.1"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = canary.base_url.rsplit(":", 1)[1]
    url = f"http://rebind.test:{port}/"
    netguard.check_url(url)  # passes: the name looks public now
    with pytest.raises(netguard.UnsafeURL):
        http.session().request("PROPFIND", url, headers={"Depth": "0"})
    assert len(lookups) == 2, "the second lookup was the connection's"
    assert canary.requests == []


@pytest.mark.parametrize("url", ["http+unix://%2Ftmp%2Fcaly.sock/", "ftp://127.0.0.2/x"])
def test_the_session_itself_refuses_other_schemes(guarded, url):
    with pytest.raises(netguard.UnsafeURL, match="http and https"):
        http.session().request("GET", url)


def test_development_setting_allows_loopback(api, settings, canary):
    settings.CALY_ALLOW_PRIVATE_URLS = True
    canary.put("one.ics", vevent("one@example.com"))
    http.close_pool()
    assert _connect(api, canary.url).status_code == 201
