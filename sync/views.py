"""The user dashboard: server-rendered; its live parts poll the JSON API (/api/sync/,
/api/accounts/, /api/calendars/, /api/events/) and write events through it."""

import datetime as dt

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.timesince import timeuntil

from calendars.models import Account
from calendars.selectors import calendars_for_user, calendars_missing_for_user
from sync import selectors
from sync.models import SyncRun
from sync.oauth import google_oauth_enabled

RECENT_RUNS = 10


def _google_connect_url(account) -> str:
    """Where a person reconnects a Google account, if Google sign-in is set up here."""
    if not google_oauth_enabled():
        return ""
    try:
        return reverse("google-connect", args=[account.pk])
    except NoReverseMatch:
        return ""


def _next_sync_text(account, *, resync_enabled: bool, now) -> str:
    """The same wording the page's script keeps up to date."""
    if account.status == Account.Status.NEEDS_REAUTH:
        return "paused until you reconnect"
    if account.next_sync_at is None:
        return "off"
    if account.busy:
        return "now"
    if not resync_enabled:
        return "when you press Sync now"
    if account.next_sync_at <= now + dt.timedelta(minutes=1):
        return "within a minute"
    return f"in {timeuntil(account.next_sync_at, now)}"


@login_required
def dashboard(request):
    now = timezone.now()
    accounts = selectors.accounts_overview(user=request.user)
    resync_enabled = selectors.resync_enabled()
    missing = {}
    for calendar in calendars_missing_for_user(user=request.user):
        missing.setdefault(calendar.account_id, []).append(calendar)
    for account in accounts:
        account.missing_calendars = missing.get(account.pk, [])
        account.reconnect_url = (
            _google_connect_url(account) if account.provider == Account.Provider.GOOGLE else ""
        )
        account.next_sync_text = _next_sync_text(account, resync_enabled=resync_enabled, now=now)
    runs = selectors.runs_for_user(user=request.user).select_related("account")[:RECENT_RUNS]
    config = {
        "resyncMinutes": settings.CALY_RESYNC_MINUTES if resync_enabled else None,
        "recentRuns": RECENT_RUNS,
        "reconnectUrls": {a.pk: a.reconnect_url for a in accounts if a.reconnect_url},
        "terminalStates": list(SyncRun.TERMINAL_STATES),
        "statusLabels": dict(Account.Status.choices),
        "triggerLabels": dict(SyncRun.Trigger.choices),
        # As /api/calendars/ lists them: "This week" names each event's calendar, and offers
        # the writable, selected ones for a new event; the script refreshes them after a sync.
        "calendars": [
            {
                "id": c.pk,
                "name": c.name,
                "url": c.remote_id,
                "writable": c.writable,
                "selected": c.selected,
            }
            for c in calendars_for_user(user=request.user).order_by("name", "id")
        ],
    }
    return render(
        request,
        "dashboard.html",
        {
            "accounts": accounts,
            "runs": runs,
            "resync_minutes": settings.CALY_RESYNC_MINUTES,
            "resync_enabled": resync_enabled,
            "config": config,
        },
    )
