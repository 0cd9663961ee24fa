"""Schemathesis against /api/schema/: generated valid and invalid requests to every operation,
as a user with data of their own, get no 5xx and answers that conform to the schema.

Runs in-process through Django's WSGI application. Nothing leaves this machine: private URLs
are refused (production rules) and every name lookup but the broker's fails, so an account URL the generator
invents is a 400, never a connection. Bounded: CALY_FUZZ_EXAMPLES cases per operation and
mode (default 25) and at most CALY_FUZZ_SECONDS (default 45) in all.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import schemathesis
from django.conf import settings as django_settings
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from sync import http
from sync.models import SyncRun
from tests.factories import make_account, make_calendar, make_event, make_user

pytestmark = [pytest.mark.django_db(transaction=True)]

EXAMPLES = int(os.environ.get("CALY_FUZZ_EXAMPLES", "15"))
BUDGET_SECONDS = float(os.environ.get("CALY_FUZZ_SECONDS", "75"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # These tests make users by the dozen; the production hasher's cost is not what they test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def offline(settings, monkeypatch):
    """No request the fuzzer provokes can reach anything but loopback, and loopback is refused."""
    settings.CALY_ALLOW_PRIVATE_URLS = False
    rates = {"account_connect": "100000/minute", "sync_request": "100000/minute"}
    settings.REST_FRAMEWORK = {**django_settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}

    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        # The broker (RabbitMQ on loopback) is still reachable; invented names are not.
        if host in ("127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost"):
            return real(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "name lookups are off in this test")

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    http.close_pool()
    yield
    http.close_pool()


@pytest.fixture
def owner_with_data(db):
    owner = make_user("fuzzy")
    account = make_account(owner, username="fuzzy", credentials={"password": "pw"})
    calendar = make_calendar(account, name="Work", timezone="Europe/Berlin")
    make_event(calendar, summary="Standup", rrule="FREQ=DAILY;COUNT=3")
    make_event(calendar, summary="Review")
    SyncRun.objects.create(account=account, trigger="api", state="succeeded")
    return owner


def test_the_api_survives_generated_requests(offline, owner_with_data):
    token = Token.objects.create(user=owner_with_data)
    auth = {"Authorization": f"Token {token.key}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    deadline = time.monotonic() + BUDGET_SECONDS
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                break

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case):
                if time.monotonic() > deadline:
                    return
                response = case.call(headers=auth)
                case.validate_response(response, checks=CHECKS, headers=auth)

            try:
                exercise()
            except Unsatisfiable:
                # An operation that takes no parameters and no body (GET /api/feed/) has no
                # invalid request to make.
                if mode is GenerationMode.POSITIVE:
                    raise
                continue
            tried.append(f"{operation.method.upper()} {operation.path} {mode.value}")
    # Every operation was fuzzed at least in the positive mode within the budget.
    operations = {f"{op.ok().method.upper()} {op.ok().path}" for op in schema.get_all_operations()}
    assert {t.rsplit(" ", 1)[0] for t in tried} == operations, tried
