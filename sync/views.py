"""The user dashboard: server-rendered; its live parts poll the JSON API (/api/sync/,
/api/accounts/, /api/calendars/, /api/events/) and write through it. Two small endpoints of its
own: "Sync now" (recorded as trigger `dashboard`) and one account's rows, for an account the page
has just connected."""

import datetime as dt

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.timesince import timeuntil
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from calendars.models import Account
from calendars.selectors import calendars_for_user, calendars_missing_for_user
from sync import selectors, services
from sync.api import ServiceUnavailable, SyncRequestSerializer, SyncRunSerializer
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


def _accounts(request, *, account_id: int | None = None) -> tuple[list[Account], bool]:
    """The accounts as the page shows them, and whether beat's resync is on."""
    now = timezone.now()
    accounts = selectors.accounts_overview(user=request.user, account_id=account_id)
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
    return accounts, resync_enabled


@login_required
def dashboard(request):
    accounts, resync_enabled = _accounts(request)
    runs = selectors.runs_for_user(user=request.user).select_related("account")[:RECENT_RUNS]
    config = {
        "resyncMinutes": settings.CALY_RESYNC_MINUTES if resync_enabled else None,
        "recentRuns": RECENT_RUNS,
        "reconnectUrls": {a.pk: a.reconnect_url for a in accounts if a.reconnect_url},
        "terminalStates": list(SyncRun.TERMINAL_STATES),
        "statusLabels": dict(Account.Status.choices),
        "triggerLabels": dict(SyncRun.Trigger.choices),
        # As /api/calendars/ lists them: each account's calendars with their switch, and "This
        # week" names each event's calendar and offers the writable, selected ones for a new
        # event; the script refreshes them after a sync.
        "calendars": [
            {
                "id": c.pk,
                "account": c.account_id,
                "name": c.name,
                "url": c.remote_id,
                "color": c.color,
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
            "google_enabled": google_oauth_enabled(),
            "config": config,
        },
    )


@login_required
def dashboard_account(request, account_id: int):
    """One account's rows of the dashboard's table, as the page renders them on load."""
    accounts, _ = _accounts(request, account_id=account_id)
    if not accounts:
        raise Http404
    return render(request, "_account.html", {"a": accounts[0]})


@extend_schema(exclude=True)
class DashboardSyncView(APIView):
    """The dashboard's "Sync now" and "Sync all": POST /api/sync/'s body and answer, recorded as
    trigger `dashboard`. Session only, so that only the signed-in page says it is the dashboard."""

    authentication_classes = [SessionAuthentication]
    throttle_scope = "sync_request"

    def post(self, request):
        incoming = SyncRequestSerializer(data=request.data, user=request.user)
        incoming.is_valid(raise_exception=True)
        try:
            runs = services.sync_request(
                user=request.user,
                account=incoming.validated_data.get("account"),
                trigger=SyncRun.Trigger.DASHBOARD,
            )
        except services.AccountNotSyncable as exc:
            raise ValidationError({"account": [str(exc)]}) from None
        except services.BrokerUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from None
        return Response(
            {"runs": SyncRunSerializer(runs, many=True).data}, status=status.HTTP_202_ACCEPTED
        )
