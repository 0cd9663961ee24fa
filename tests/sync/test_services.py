"""Service rules that need only the database."""

from __future__ import annotations

import pytest

from calendars.models import Account, Event
from sync import services
from sync.providers.base import ChangeBatch, RemoteEvent, RemoteObject
from tests.factories import make_account, make_calendar, make_user

pytestmark = pytest.mark.django_db


def remote(uid: str, href: str) -> RemoteObject:
    return RemoteObject(href=href, etag='"1"', events=(RemoteEvent(uid=uid),), raw="")


def test_an_object_too_big_for_its_columns_is_skipped_and_named_the_rest_stored():
    calendar = make_calendar(make_account(make_user()))
    batch = ChangeBatch(objects=[remote("x" * 1001, "/cal/long.ics"), remote("ok", "/cal/ok.ics")])

    services.events_apply(calendar=calendar, batch=batch)

    assert list(Event.objects.filter(calendar=calendar).values_list("uid", flat=True)) == ["ok"]
    assert [(s.href, s.reason) for s in batch.skipped] == [
        ("/cal/long.ics", "uid too long to store")
    ]


def test_new_credentials_reactivate_an_account_that_needed_them_but_not_a_disabled_one():
    user = make_user()
    expired = make_account(user, status=Account.Status.NEEDS_REAUTH)
    disabled = make_account(user, status=Account.Status.DISABLED)

    services.account_update(account=expired, credentials={"password": "new"})
    services.account_update(account=disabled, credentials={"password": "new"})

    assert Account.objects.get(pk=expired.pk).status == Account.Status.ACTIVE
    assert Account.objects.get(pk=disabled.pk).status == Account.Status.DISABLED
    assert Account.objects.get(pk=disabled.pk).credentials == {"password": "new"}
