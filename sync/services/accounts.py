"""Connecting accounts and keeping their stored calendar lists in step with their servers."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from django.contrib.auth import get_user_model
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


class AccountRefused(ConnectError):
    """The account cannot be connected or changed as asked; `field` names the part of the
    request that is the problem (the API answers 400 naming it)."""

    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.field = field


def caldav_url_key(url: str) -> str:
    """A CalDAV URL as compared for "the same server": scheme and host in lower case, the
    default port and a trailing slash left out."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), parts.query, ""))


def _already_connected(
    *, owner_id: int, provider: str, url: str, username: str, exclude: int | None = None
) -> None:
    """Raise AccountRefused if `owner` has this account connected already: the same CalDAV
    server and username, or the same Google address.

    The caller holds the owner's row locked (`_lock_owner`), so two requests connecting the
    same account at once cannot both pass.
    """
    others = Account.objects.filter(owner_id=owner_id, provider=provider).exclude(pk=exclude)
    if provider == Account.Provider.GOOGLE:
        if not username:
            return
        same = others.filter(username__iexact=username).order_by("pk").first()
        if same is not None:
            raise AccountRefused(
                f"This Google account ({username}) is already connected as account "
                f"{same.pk} (“{same.name}”).",
                field="refresh_token",
            )
        return
    key = caldav_url_key(url)
    for same in others.filter(username=username).only("pk", "name", "url").order_by("pk"):
        if caldav_url_key(same.url) == key:
            raise AccountRefused(
                f"This server and username are already connected as account {same.pk} "
                f"(“{same.name}”).",
                field="url",
            )


def _lock_owner(owner_id: int) -> None:
    """Serialise connecting and changing one user's accounts: of two requests connecting the
    same account at once, the second sees the first's row."""
    list(get_user_model().objects.select_for_update().filter(pk=owner_id).values_list("pk"))


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

    Raises ProviderError subclasses (ConnectError, AuthError) before anything is written;
    AccountRefused if the owner has connected this account already (a CalDAV account before its
    server is asked, a Google one once its address is known).
    """
    if provider != Account.Provider.GOOGLE:
        _already_connected(owner_id=owner.pk, provider=provider, url=url, username=username)
    client = provider_class(provider)(url=url, username=username, credentials=credentials)
    try:
        remote = client.discover()
    finally:
        client.close()
    account_home_url_check(home_url=client.home_url)
    # Discovery may learn who the account is (Google: the address of its calendars).
    username = client.username or username
    with transaction.atomic():
        _lock_owner(owner.pk)
        _already_connected(owner_id=owner.pk, provider=provider, url=url, username=username)
        account = Account.objects.create(
            owner=owner,
            provider=provider,
            name=name,
            url=url,
            username=username,
            credentials=credentials,
            home_url=client.home_url,
        )
        calendars_reconcile(account=account, remote=remote)
    return account


# Fields of an account a change may name, and what each provider's accounts refuse.
UPDATABLE_FIELDS = frozenset({"name", "url", "username"})
_REFUSED = {
    Account.Provider.GOOGLE: {
        "url": "A Google account has no server URL.",
        "username": (
            "A Google account's address cannot be changed; connect the other Google account "
            "as an account of its own."
        ),
        "password": "A Google account has no password; give a new refresh_token instead.",
    },
    Account.Provider.CALDAV: {
        "refresh_token": "A CalDAV account has no refresh token; give its password instead.",
    },
}


def _stored_credentials(account: Account) -> dict:
    try:
        return dict(account.credentials)
    except ImproperlyConfigured:  # unreadable with today's keys: the new ones replace them
        return {}


def account_update(*, account: Account, credentials: dict | None = None, **fields) -> Account:
    """Change an account; new credentials make an account that needed them active again.

    A new URL or username of a CalDAV account, or a new refresh token of a Google one, is
    checked with the server first, as connecting is (the calendar home found again, the
    calendar list brought up to date): a CalDAV account must not become one the owner has
    connected already, a Google token must be the same Google user's. What an account of its
    provider cannot change raises AccountRefused naming it.

    Only the fields changed here are written: a sync may be recording the account's status,
    last sync or error meanwhile. An account an administrator disabled stays disabled.
    """
    credentials = dict(credentials or {})
    unknown = set(fields) - UPDATABLE_FIELDS
    if unknown:
        raise AccountRefused("This field cannot be changed.", field=sorted(unknown)[0])
    # A field given as it is stored (a form sending the account back) changes nothing.
    fields = {n: v for n, v in fields.items() if n == "name" or getattr(account, n) != v}
    for name in sorted({*fields, *credentials}):
        refused = _REFUSED.get(account.provider, {}).get(name)
        if refused:
            raise AccountRefused(refused, field=name)
    if "url" in fields and not fields["url"]:
        raise AccountRefused("A CalDAV account needs the server's URL.", field="url")
    moved = bool({"url", "username"} & set(fields))
    url = fields.get("url", account.url)
    username = fields.get("username", account.username)
    google = account.provider == Account.Provider.GOOGLE
    checked = None
    if moved or (google and "refresh_token" in credentials):
        if moved:
            _already_connected(
                owner_id=account.owner_id,
                provider=account.provider,
                url=url,
                username=username,
                exclude=account.pk,
            )
        client = provider_class(account.provider)(
            url=url,
            # Google: the address is what the token's calendars say, not what was stored.
            username="" if google else username,
            credentials={**_stored_credentials(account), **credentials},
        )
        try:
            remote = client.discover()
        finally:
            client.close()
        learned = client.username.lower()
        if google and account.username and learned not in ("", account.username.lower()):
            raise AccountRefused(
                f"This refresh token is {client.username}'s, but this account is "
                f"{account.username}. Connect it as a new account instead.",
                field="refresh_token",
            )
        account_home_url_check(home_url=client.home_url)
        checked = (client.home_url, remote)
    with transaction.atomic():
        if moved:
            _lock_owner(account.owner_id)
            _already_connected(
                owner_id=account.owner_id,
                provider=account.provider,
                url=url,
                username=username,
                exclude=account.pk,
            )
        return _account_write(
            account=account, credentials=credentials, fields=fields, checked=checked
        )


def _account_write(
    *, account: Account, credentials: dict, fields: dict, checked: tuple | None
) -> Account:
    changed = set(fields)
    for name, value in fields.items():
        setattr(account, name, value)
    if checked is not None:
        account.home_url, remote = checked
        changed.add("home_url")
        calendars_reconcile(account=account, remote=remote)
    if credentials:
        account.credentials = {**_stored_credentials(account), **credentials}
        changed.add("credentials")
    if credentials or checked is not None:
        # The server took them (or they are new): what went wrong before is no longer so.
        account.last_error = ""
        changed.add("last_error")
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
