"""Connected accounts (sync.services.accounts)."""

from __future__ import annotations

import pytest

from calendars.models import Account
from sync import services
from tests.factories import make_account, make_user

pytestmark = pytest.mark.django_db


def test_new_credentials_reactivate_an_account_that_needed_them_but_not_a_disabled_one():
    user = make_user()
    expired = make_account(user, status=Account.Status.NEEDS_REAUTH)
    disabled = make_account(user, status=Account.Status.DISABLED)

    services.account_update(account=expired, credentials={"password": "new"})
    services.account_update(account=disabled, credentials={"password": "new"})

    assert Account.objects.get(pk=expired.pk).status == Account.Status.ACTIVE
    assert Account.objects.get(pk=disabled.pk).status == Account.Status.DISABLED
    assert Account.objects.get(pk=disabled.pk).credentials == {"password": "new"}
