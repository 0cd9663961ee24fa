"""The admin an operator uses: accounts with "Sync now", read-only events, sync runs with their
timings and filters, and Celery's task history linked to the sync runs (and back)."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone
from django_celery_results.models import TaskResult

from calendars.models import Account
from sync.models import SyncRun
from tests.factories import (
    connect_seeded_caldav,
    make_account,
    make_calendar,
    make_event,
    make_user,
)
from tests.support.polling import wait_for


def run_at(account, *, state, trigger="api", wait_s=0.0, took_s=0.0, **fields) -> SyncRun:
    requested = timezone.now() - dt.timedelta(minutes=5)
    started = requested + dt.timedelta(seconds=wait_s) if state != "queued" else None
    finished = started + dt.timedelta(seconds=took_s) if state in ("succeeded", "failed") else None
    return SyncRun.objects.create(
        account=account,
        trigger=trigger,
        state=state,
        requested_at=requested,
        started_at=started,
        finished_at=finished,
        **fields,
    )


def listed_run_ids(response) -> list[int]:
    return [int(i) for i in re.findall(r'href="/admin/sync/syncrun/(\d+)/change/', response.text)]


@pytest.mark.django_db
def test_sync_runs_list_shows_queue_wait_and_duration_and_filters(admin_client):
    owner = make_user()
    home, work = make_account(owner, name="Home"), make_account(owner, name="Work")
    done = run_at(home, state="succeeded", wait_s=1.5, took_s=125, created=4)
    failed = run_at(work, state="failed", trigger="schedule", wait_s=0.25, took_s=3, error="boom")
    queued = run_at(work, state="queued", trigger="admin")

    page = admin_client.get("/admin/sync/syncrun/")
    assert page.status_code == 200
    for heading in ("queue wait", "duration", "progress", "task result"):
        assert heading in page.text.lower()
    assert "1.5 s" in page.text and "2 min 05 s" in page.text  # succeeded: wait, duration
    assert "250 ms" in page.text and "3.0 s" in page.text  # failed
    assert "so far" in page.text  # the queued run has waited 5 minutes and counting

    def filtered(query: str) -> set[int]:
        return set(listed_run_ids(admin_client.get(f"/admin/sync/syncrun/?{query}")))

    assert filtered("state__exact=failed") == {failed.pk}
    assert filtered("trigger__exact=admin") == {queued.pk}
    assert filtered(f"account__id__exact={work.pk}") == {failed.pk, queued.pk}
    assert filtered(f"account__id__exact={home.pk}") == {done.pk}
    # Slowest first, by the duration column.
    by_duration = admin_client.get("/admin/sync/syncrun/?o=-7").text
    assert by_duration.index(f"/admin/sync/syncrun/{done.pk}/") < by_duration.index(
        f"/admin/sync/syncrun/{failed.pk}/"
    )
    detail = admin_client.get(f"/admin/sync/syncrun/{done.pk}/change/")
    assert detail.status_code == 200 and "2 min 05 s" in detail.text


@pytest.mark.django_db
def test_events_are_read_only_and_searchable_by_summary_and_uid(admin_client):
    calendar = make_calendar(make_account(make_user()))
    dentist = make_event(calendar, summary="Dentist", uid="tooth-1@example.com")
    make_event(calendar, summary="Standup", uid="daily-7@example.com")

    by_summary = admin_client.get("/admin/calendars/event/?q=dentist")
    assert "Dentist" in by_summary.text and "Standup" not in by_summary.text
    by_uid = admin_client.get("/admin/calendars/event/?q=daily-7@example.com")
    assert "Standup" in by_uid.text and "Dentist" not in by_uid.text

    url = f"/admin/calendars/event/{dentist.pk}/change/"
    view = admin_client.get(url)
    assert view.status_code == 200 and 'name="_save"' not in view.text
    assert admin_client.post(url, {"summary": "Changed"}).status_code == 403
    assert admin_client.get("/admin/calendars/event/add/").status_code == 403
    assert admin_client.get(f"/admin/calendars/event/{dentist.pk}/delete/").status_code == 403
    dentist.refresh_from_db()
    assert dentist.summary == "Dentist"


@pytest.mark.django_db
def test_accounts_and_calendars_show_status_errors_and_counts(admin_client):
    owner = make_user()
    account = make_account(
        owner, name="Fastmail", status="needs_reauth", last_error="The server said 401"
    )
    calendar = make_calendar(account, name="Family")
    make_event(calendar)
    make_event(calendar)
    run_at(account, state="failed", error="The server said 401")

    accounts = admin_client.get("/admin/calendars/account/")
    assert "Needs re-authentication" in accounts.text and "The server said 401" in accounts.text
    assert re.search(r"#\d+ failed", accounts.text)
    detail = admin_client.get(f"/admin/calendars/account/{account.pk}/change/")
    assert "recent syncs" in detail.text.lower() and "Family" in detail.text
    assert "credentials" not in detail.text
    calendars = admin_client.get("/admin/calendars/calendar/")
    assert re.search(r'class="field-event_count">2<', calendars.text)
    # A calendar the server's last list left out says since when.
    calendar.missing_since = dt.datetime(2026, 11, 29, 9, 30, tzinfo=dt.UTC)
    calendar.save(update_fields=["missing_since"])
    calendars = admin_client.get("/admin/calendars/calendar/")
    assert re.search(r'class="field-missing_since[^>]*>2026-11-29 09:30:00 UTC<', calendars.text)


@pytest.mark.django_db  # runs before any transactional test flushes the migration's rows
def test_beat_schedules_are_in_the_admin(admin_client):
    page = admin_client.get("/admin/django_celery_beat/periodictask/")
    assert page.status_code == 200
    assert "Resync stale accounts" in page.text and "celery.backend_cleanup" in page.text


@pytest.fixture
def radicale_account(radicale, transactional_db):
    account, name = connect_seeded_caldav(radicale, owner=make_user(), events=2, prefix="admin")
    yield account
    radicale.delete_calendar(name)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_sync_now_action_queues_through_the_service_and_links_task_and_run(
    admin_client, radicale_account, worker
):
    reauth = make_account(radicale_account.owner, name="Expired", status="needs_reauth")
    changelist = reverse("admin:calendars_account_changelist")

    response = admin_client.post(
        changelist,
        {"action": "sync_now", "_selected_action": [radicale_account.pk, reauth.pk]},
        follow=True,
    )

    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("Queued: ") for m in messages), messages
    assert any("reconnect it before syncing" in m for m in messages), messages
    run = SyncRun.objects.get(account=radicale_account)
    assert run.trigger == SyncRun.Trigger.ADMIN
    assert not SyncRun.objects.filter(account=reauth).exists()
    wait_for(
        lambda: SyncRun.objects.filter(pk=run.pk, state="succeeded").exists(),
        timeout=60,
        what="the worker to finish the admin's sync",
    )
    assert Account.objects.get(pk=radicale_account.pk).last_synced_at is not None

    # Celery's record of the task carries the run's task id; each page links to the other.
    result = wait_for(
        lambda: TaskResult.objects.filter(task_id=run.task_id, status="SUCCESS").first(),
        timeout=30,
        what="the task result",
    )
    assert result.task_name == "sync.run_sync"
    run_url = reverse("admin:sync_syncrun_change", args=[run.pk])
    result_url = reverse("admin:django_celery_results_taskresult_change", args=[result.pk])
    assert run_url in admin_client.get(result_url).text
    assert run_url in admin_client.get("/admin/django_celery_results/taskresult/").text
    assert result_url in admin_client.get(run_url).text
    assert result_url in admin_client.get("/admin/sync/syncrun/").text


@pytest.mark.django_db
def test_task_results_leave_out_idle_resync_ticks_unless_asked(admin_client):
    """Beat's tick runs every minute: those that queued nothing are hidden by default, and the
    list's times say they are UTC."""
    from caly.celery import app

    def result(task_name, value, **fields) -> TaskResult:
        content_type, encoding, encoded = app.backend.encode_content(value)
        return TaskResult.objects.create(
            task_id=str(uuid.uuid4()),
            task_name=task_name,
            status=fields.pop("status", "SUCCESS"),
            result=encoded,
            content_type=content_type,
            content_encoding=encoding,
            **fields,
        )

    tick = "Resync stale accounts"
    idle = result("sync.resync_stale", {"queued_runs": []}, periodic_task_name=tick)
    busy = result("sync.resync_stale", {"queued_runs": [7, 8]}, periodic_task_name=tick)
    failed = result("sync.resync_stale", None, periodic_task_name=tick, status="FAILURE")
    sync = result("sync.run_sync", {"run": 7, "state": "succeeded", "created": 3})

    def listed(query: str = "") -> set[int]:
        page = admin_client.get(f"/admin/django_celery_results/taskresult/{query}")
        assert page.status_code == 200
        found = re.findall(
            r'href="/admin/django_celery_results/taskresult/(\d+)/change/', page.text
        )
        return {int(pk) for pk in found}

    assert listed() == {busy.pk, failed.pk, sync.pk}
    assert listed("?show=all") == {idle.pk, busy.pk, failed.pk, sync.pk}
    assert listed("?show=syncs") == {sync.pk}
    page = admin_client.get("/admin/django_celery_results/taskresult/").text
    assert "All but idle resync ticks" in page
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)
