"""A calendar password goes into the database encrypted and nowhere else: not into API answers,
task messages or results, run errors, logs or exception text. Keys can be rotated."""

from __future__ import annotations

import base64
import io
import logging
import uuid

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django_celery_results.models import TaskResult
from rest_framework.test import APIClient

from calendars.models import Account
from caly.scrub import ScrubFilter, scrub
from sync.models import SyncRun
from sync.providers.base import ConnectError
from tests.factories import make_account, make_user
from tests.support.api_sync import sync_and_wait
from tests.support.caldav_servers import start_radicale, vevent
from tests.support.hostile_server import HostileCalDAV
from tests.support.polling import wait_for

PASSWORD = f"Caly-Secret-{uuid.uuid4().hex}"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # These tests make users by the dozen; the production hasher's cost is not what they test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- scrubbing ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "secret_part"),
    [
        ("cannot reach https://carol:hunter22@dav.example.com/cal/", "hunter22"),
        ("GET http://token-abc123@dav.example.com/", "token-abc123"),
        ("headers {'Authorization': 'Basic Y2Fyb2w6aHVudGVyMjI='}", "Y2Fyb2w6aHVudGVyMjI="),
        ("Authorization: Bearer ya29.a0AfH6SMBx-long-token", "ya29.a0AfH6SMBx"),
        ("refresh_token=1//0gRefresh-Token&client_secret=GOCSPX-xyz", "1//0gRefresh"),
        ("refresh_token=1//0gRefresh-Token&client_secret=GOCSPX-xyz", "GOCSPX-xyz"),
        ('{"password": "hunter22", "name": "x"}', "hunter22"),
        ("stored gAAAAABpZ3N0b3JlZC1jcmVkZW50aWFscy1lbmNyeXB0ZWQtd2l0aA== ok", "gAAAAAB"),
        ('"GET /google/callback/?state=abc&code=4/0AeanS-secret HTTP/1.1" 302 0', "4/0AeanS"),
        ('"GET /feeds/kV3x_Feed-Secret9.ics HTTP/1.1" 200 512', "kV3x_Feed-Secret9"),
        ("Not Found: /feeds/kV3x_Feed-Secret9.ics", "kV3x_Feed-Secret9"),
    ],
)
def test_scrub_removes_credentials(text, secret_part):
    cleaned = scrub(text)
    assert secret_part not in cleaned
    assert "***" in cleaned


@pytest.mark.parametrize(
    "text",
    [
        "The CalDAV server refused the username or password.",
        "PROPFIND /calendars/work/ answered HTTP 404, expected 207.",
        "sync-token http://radicale.org/ns/sync/abc changed",
        "Cannot connect to dav.example.com:8443: is the address right?",
    ],
)
def test_scrub_leaves_ordinary_messages_alone(text):
    assert scrub(text) == text


def test_the_web_servers_access_log_is_scrubbed():
    """runserver logs request lines through `django.server`, which has a handler of its own."""
    handlers = logging.getLogger("django.server").handlers
    assert handlers and all(any(isinstance(f, ScrubFilter) for f in h.filters) for h in handlers)


def test_scrub_removes_given_secrets_anywhere():
    assert scrub(f"server said: {PASSWORD}!", secrets=[PASSWORD]) == "server said: ***!"


def test_provider_errors_never_carry_credentials():
    exc = ConnectError("https://carol:hunter22@dav.example.com/ does not look like a server")
    assert "hunter22" not in str(exc)
    assert "https://***@dav.example.com/" in f"{exc}"


def test_the_log_filter_scrubs_messages_arguments_and_tracebacks():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ScrubFilter())
    log = logging.getLogger(f"caly.test.{uuid.uuid4().hex}")
    log.addHandler(handler)
    log.propagate = False
    log.warning("connecting to %s", "https://carol:hunter22@dav.example.com/")
    try:
        raise ValueError("refresh_token=1//0gSecretRefresh rejected")
    except ValueError:
        log.exception("sync failed")
    log.warning("server sent %s", "x" * 100_000)
    text = out.getvalue()
    assert "hunter22" not in text and "0gSecretRefresh" not in text
    assert "https://***@dav.example.com/" in text
    assert "Traceback" in text and "ValueError" in text
    assert len(text) < 10_000, "a huge message is cut"
    assert "more characters not logged" in text


def test_api_error_text_is_scrubbed(api, monkeypatch):
    from sync import services

    def fails(**kwargs):
        raise ConnectError("Cannot reach https://bob:hunter22@dav.example.com/ (refused)")

    monkeypatch.setattr(services, "account_connect", fails)
    response = api.post(
        "/api/accounts/",
        {"provider": "caldav", "name": "x", "url": "https://dav.example.com/"},
        format="json",
    )
    assert response.status_code == 400
    assert "hunter22" not in response.content.decode()
    assert "https://***@dav.example.com/" in response.json()["url"][0]


# --- a real account, a real worker ----------------------------------------------------------
@pytest.fixture(scope="module")
def locked_radicale():
    server = start_radicale("carol", password=PASSWORD)
    yield server
    server.stop()


def _assert_nowhere(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_password_is_stored_encrypted_and_shows_up_nowhere(api, locked_radicale, worker):
    calendar = f"cal-{uuid.uuid4().hex[:8]}"
    locked_radicale.make_calendar(calendar, display_name="Work")
    locked_radicale.put(calendar, "a.ics", vevent("a@example.com"))
    body = {
        "provider": "caldav",
        "name": "Carol",
        "url": locked_radicale.base_url + "/",
        "username": "carol",
    }
    basic = base64.b64encode(f"carol:{PASSWORD}".encode()).decode()

    wrong = api.post("/api/accounts/", {**body, "password": "Not-" + PASSWORD}, format="json")
    assert wrong.status_code == 400
    assert set(wrong.json()) == {"password"}
    _assert_nowhere(wrong.content.decode(), PASSWORD)

    created = api.post("/api/accounts/", {**body, "password": PASSWORD}, format="json")
    assert created.status_code == 201, created.json()
    account_id = created.json()["id"]

    # At rest: a Fernet token, not the password.
    with connection.cursor() as cursor:
        cursor.execute("SELECT credentials FROM calendars_account WHERE id = %s", [account_id])
        (stored,) = cursor.fetchone()
    assert stored.startswith("gAAAAA")
    _assert_nowhere(stored, PASSWORD)
    assert Account.objects.get(pk=account_id).credentials == {"password": PASSWORD}

    first = sync_and_wait(api, account_id)
    assert first["state"] == "succeeded", first

    # The server changes the password: the next sync fails and asks the user to reconnect.
    (locked_radicale.data_dir / "htpasswd").write_text(f"carol:Changed-{PASSWORD}\n")
    try:
        second = sync_and_wait(api, account_id)
    finally:
        (locked_radicale.data_dir / "htpasswd").write_text(f"carol:{PASSWORD}\n")
    assert second["state"] == "failed"
    assert "username or password" in second["error"]
    account = Account.objects.get(pk=account_id)
    assert account.status == "needs_reauth"

    # Nothing a user, an operator or the queue sees carries the password (or its Basic form).
    for path in (
        "/api/accounts/",
        f"/api/accounts/{account_id}/",
        f"/api/calendars/?account={account_id}",
        f"/api/sync/?account={account_id}",
    ):
        _assert_nowhere(api.get(path).content.decode(), PASSWORD, basic)
    for run in SyncRun.objects.filter(account_id=account_id):
        _assert_nowhere(run.error, PASSWORD, basic)
    _assert_nowhere(account.last_error, PASSWORD, basic)

    task_ids = set(SyncRun.objects.filter(account_id=account_id).values_list("task_id", flat=True))
    results = wait_for(
        lambda: (
            list(TaskResult.objects.filter(task_name="sync.run_sync", status="SUCCESS"))
            if TaskResult.objects.filter(task_id__in=task_ids, date_done__isnull=False).count() >= 2
            else None
        ),
        timeout=30,
        what="the task results",
    )
    for result in results:
        for column in (result.task_args, result.task_kwargs, result.result, result.meta):
            _assert_nowhere(column or "", PASSWORD, basic)
        _assert_nowhere(result.traceback or "", PASSWORD, basic)
    # The message carried the run id and nothing else.
    mine = [r for r in results if r.task_id in task_ids]
    run_ids = {
        str(pk) for pk in SyncRun.objects.filter(account_id=account_id).values_list("pk", flat=True)
    }
    assert mine and all(r.task_args.strip("\"'()[], ") in run_ids for r in mine)
    assert all(r.task_kwargs.strip("\"'") in ("{}", "") for r in mine)

    _assert_nowhere(worker.log(), PASSWORD, basic)

    admin = APIClient()
    make_user("root", is_staff=True, is_superuser=True)
    admin.login(username="root", password="pw-root")
    page = admin.get(f"/admin/calendars/account/{account_id}/change/")
    assert page.status_code == 200
    _assert_nowhere(page.content.decode(), PASSWORD, basic, stored)


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_credentials_a_server_echoes_back_stay_out_of_the_worker_log(api, user, worker):
    """python-caldav logs a whole body it cannot parse; a server quoting our Authorization
    header back must not get the password into the logs (or the run error)."""
    server = HostileCalDAV()
    try:
        server.put("a.ics", vevent("a@example.com"))
        account = make_account(
            user, url=server.url, username="carol", credentials={"password": PASSWORD}
        )
        server.misbehave("echo_credentials")
        run = sync_and_wait(api, account.pk)
        basic = base64.b64encode(f"carol:{PASSWORD}".encode()).decode()
        assert any(kind == "principal" for kind in server.kinds_requested())
        wait_for(lambda: "you sent Authorization" in worker.log(), timeout=10, what="the log")
        _assert_nowhere(worker.log(), PASSWORD, basic)
        assert "you sent Authorization: Basic *** to /" in worker.log()
        _assert_nowhere(run["error"], PASSWORD, basic)
    finally:
        server.stop()


# --- key rotation ---------------------------------------------------------------------------
def test_rotating_the_key_reencrypts_every_account(settings, db):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.CALY_ENCRYPTION_KEYS = [old]
    owner = make_user("dora")
    accounts = [make_account(owner, credentials={"password": f"pw-{i}"}) for i in range(3)]
    make_account(owner)  # no credentials: nothing to rotate

    settings.CALY_ENCRYPTION_KEYS = [new, old]
    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    assert "of 3 account(s)" in out.getvalue()

    settings.CALY_ENCRYPTION_KEYS = [new]  # the old key is gone
    for i, account in enumerate(accounts):
        assert Account.objects.get(pk=account.pk).credentials == {"password": f"pw-{i}"}

    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    assert "of 0 account(s)" in out.getvalue() and "3 already used it" in out.getvalue()


def test_rotation_reports_credentials_no_key_can_read(settings, db):
    lost = Fernet.generate_key().decode()
    settings.CALY_ENCRYPTION_KEYS = [lost]
    account = make_account(make_user("eve"), credentials={"password": "pw"})
    settings.CALY_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(CommandError, match=f"account\\(s\\) {account.pk}"):
        call_command("rotate_encryption_key", stdout=io.StringIO())
    settings.CALY_ENCRYPTION_KEYS = [lost]
    assert Account.objects.get(pk=account.pk).credentials == {"password": "pw"}
