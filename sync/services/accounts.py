"""Connecting accounts and keeping their stored calendar lists in step with their servers."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from calendars.models import Account, Calendar
from sync.engine import normalize_href
from sync.providers import provider_class
from sync.providers.base import ConnectError, ProviderError
from sync.remote import RemoteCalendar

logger = logging.getLogger(__name__)

# Addresses a server hands over are stored in columns of this many characters (PostgreSQL
# refuses anything longer); no real server's addresses come near.
HOME_URL_MAX_LENGTH = Account._meta.get_field("home_url").max_length
CALENDAR_ID_MAX_LENGTH = Calendar._meta.get_field("remote_id").max_length


def account_home_url_check(*, home_url: str) -> None:
    """Raise ConnectError if the calendar home the server named is too long to store."""
    if len(home_url) > HOME_URL_MAX_LENGTH:
        raise ConnectError(
            f"The server's calendar home address is {len(home_url):,} characters long; Caly "
            f"stores addresses of up to {HOME_URL_MAX_LENGTH:,} characters."
        )


def account_connect(
    *,
    owner,
    provider: str,
    name: str,
    url: str = "",
    username: str = "",
    credentials: dict,
) -> Account:
    """Check the account against its server, then store it with its calendars.

    Raises ProviderError subclasses (ConnectError, AuthError) before anything is written.
    """
    client = provider_class(provider)(url=url, username=username, credentials=credentials)
    try:
        remote = client.discover()
    finally:
        client.close()
    account_home_url_check(home_url=client.home_url)
    with transaction.atomic():
        account = Account.objects.create(
            owner=owner,
            provider=provider,
            name=name,
            url=url,
            # Discovery may learn who the account is (Google: the address of its calendars).
            username=client.username or username,
            credentials=credentials,
            home_url=client.home_url,
        )
        calendars_reconcile(account=account, remote=remote)
    return account


@transaction.atomic
def account_update(*, account: Account, credentials: dict | None = None, **fields) -> Account:
    """Change an account; new credentials make an account that needed them active again.

    Only the fields changed here are written: a sync may be recording the account's status,
    last sync or error meanwhile. An account an administrator disabled stays disabled.
    """
    changed = set(fields)
    for name, value in fields.items():
        setattr(account, name, value)
    if credentials:
        try:
            current = account.credentials
        except ImproperlyConfigured:  # unreadable with today's keys: the new ones replace them
            current = {}
        account.credentials = {**current, **credentials}
        account.last_error = ""
        changed |= {"credentials", "last_error"}
        # The status as it is now, not as it was when the caller read the account.
        account.status = (
            Account.objects.select_for_update().values_list("status", flat=True).get(pk=account.pk)
        )
        if account.status == Account.Status.NEEDS_REAUTH:
            account.status = Account.Status.ACTIVE
            changed.add("status")
    if changed:
        account.save(update_fields=[*changed, "updated_at"])
    return account


@dataclass(frozen=True)
class ListedCalendar:
    """A stored calendar the server listed, and whether this listing added it (no events yet)."""

    calendar: Calendar
    added: bool


def calendars_reconcile(
    *,
    account: Account,
    remote: Iterable[RemoteCalendar],
    stored: Iterable[Calendar] | None = None,
) -> list[ListedCalendar]:
    """Make the stored calendar list match the server's: add, rename, remove.

    Returns the calendars the server listed. A calendar the server leaves out is kept, events
    and all, the first time (`missing_since`): a listing that drops one calendar may be the
    server's hiccup, and deleting it would lose its events' ids. The next listing without it
    deletes it; one with it keeps it.

    A calendar whose id (CalDAV href) is longer than Caly stores is left out, with a warning in
    the log; if that leaves none of the listed calendars, it is a ProviderError saying why.
    `stored`: the account's calendars, if the caller has read them already.
    """
    listed = list(remote)
    remote = [item for item in listed if len(item.remote_id) <= CALENDAR_ID_MAX_LENGTH]
    if len(remote) < len(listed):
        logger.warning(
            "account %s: %d calendar(s) left out: their addresses are longer than %d characters",
            account.pk,
            len(listed) - len(remote),
            CALENDAR_ID_MAX_LENGTH,
        )
        if not remote:
            raise ProviderError(
                f"Every calendar the server listed has an address longer than "
                f"{CALENDAR_ID_MAX_LENGTH:,} characters, which Caly cannot store."
            )
    if stored is None:
        stored = Calendar.objects.filter(account=account).order_by("pk")
    existing = {normalize_href(c.remote_id): c for c in stored}
    if not remote and existing:
        raise ProviderError(
            "The server listed no calendars at all; keeping the stored ones. "
            "If they were really removed, remove the account."
        )
    seen = set()
    result = []
    for item in remote:
        key = normalize_href(item.remote_id)
        seen.add(key)
        shown = {
            "name": item.name[:500],
            "color": item.color[:32],
            "timezone": item.timezone[:100],
            "writable": item.writable,
        }
        calendar = existing.get(key)
        if calendar is None:
            calendar = Calendar.objects.create(account=account, remote_id=item.remote_id, **shown)
            result.append(ListedCalendar(calendar, added=True))
            continue
        changed = {n: v for n, v in shown.items() if getattr(calendar, n) != v}
        if calendar.missing_since is not None:
            changed["missing_since"] = None
        if changed:
            for name, value in changed.items():
                setattr(calendar, name, value)
            calendar.save(update_fields=list(changed))
        result.append(ListedCalendar(calendar, added=False))
    missing = [c for key, c in existing.items() if key not in seen]
    gone = [c.pk for c in missing if c.missing_since is not None]
    if gone:
        Calendar.objects.filter(pk__in=gone).delete()
    newly_missing = [c.pk for c in missing if c.missing_since is None]
    if newly_missing:
        Calendar.objects.filter(pk__in=newly_missing).update(missing_since=timezone.now())
        logger.warning(
            "account %s: calendars %s not listed by the server; deleted if the next sync does "
            "not list them either",
            account.pk,
            newly_missing,
        )
    return result
