"""Fixtures of the CalDAV provider tests: each test runs against Radicale and Xandikos, on a
calendar of its own, optionally behind the tests' DAV proxy."""

from __future__ import annotations

import pytest

from tests.support.dav_proxy import DAVProxy
from tests.sync.providers.caldav_helpers import new_calendar


@pytest.fixture(params=["radicale", "xandikos"])
def server(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def cal(server):
    name = new_calendar(server)
    yield name
    server.delete_calendar(name)


@pytest.fixture
def proxy(server):
    proxy = DAVProxy(server.base_url).start()
    yield proxy
    proxy.stop()
