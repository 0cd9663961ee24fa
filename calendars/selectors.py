"""Reads of the synced data, always scoped to one user."""

from __future__ import annotations

import datetime as dt

from django.db.models import Q, QuerySet

from calendars.models import Account, Calendar, Event


def accounts_for_user(*, user) -> QuerySet[Account]:
    return Account.objects.filter(owner=user)


def calendars_for_user(*, user, account_id: int | None = None) -> QuerySet[Calendar]:
    qs = Calendar.objects.filter(account__owner=user).select_related("account")
    if account_id is not None:
        qs = qs.filter(account_id=account_id)
    return qs


def events_for_user(
    *,
    user,
    calendar_id: int | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> QuerySet[Event]:
    qs = Event.objects.filter(calendar__account__owner=user)
    if calendar_id is not None:
        qs = qs.filter(calendar_id=calendar_id)
    if start is not None:
        # Recurring masters can have occurrences after their first end.
        qs = qs.filter(Q(end__gt=start) | Q(end__isnull=True) | ~Q(rrule="") | ~Q(rdate=[]))
    if end is not None:
        qs = qs.filter(Q(start__lt=end) | Q(start__isnull=True))
    return qs.order_by("start", "id")
