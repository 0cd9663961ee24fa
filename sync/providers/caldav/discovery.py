"""CalDAV discovery: from the address a user typed to the calendar home (python-caldav, RFC
6764), and the home's calendar list (one PROPFIND of Caly's own)."""

from __future__ import annotations

import logging
from urllib.parse import unquote, urljoin, urlsplit

import caldav
import niquests
from caldav.lib import error as caldav_error
from caldav.lib.url import URL
from django.conf import settings
from lxml import etree

from sync import http
from sync.engine import normalize_href
from sync.providers.base import AuthError, ConnectError, ProviderError, TransientError
from sync.providers.caldav.dav import (
    AUTH_REFUSED,
    CALENDAR_LIST_BODY,
    CALENDAR_LIST_CTAG,
    MAX_CALENDARS,
    NS,
    CalendarInfo,
    DAVSession,
    Item,
    vtimezone_id,
)
from sync.remote import RemoteCalendar

logger = logging.getLogger(__name__)


def discovery_client(url: str, username: str, password: str) -> caldav.DAVClient:
    """python-caldav, for discovery only (RFC 6764 and principal lookups)."""
    client = caldav.DAVClient(
        url=url,
        username=username or None,
        password=password or None,
        timeout=settings.CALY_HTTP_TIMEOUT,
        enable_rfc6764=False,
        headers={"User-Agent": http.USER_AGENT},
    )
    # One pooled session for every account, with Caly's timeout and no cookies.
    client.session = http.session()
    return client


def find_home(client: caldav.DAVClient, url: str, *, host: str) -> str:
    """Server root, principal or calendar home → the calendar home URL (RFC 6764 §5)."""
    for candidate in (url, urljoin(url, "/.well-known/caldav")):
        try:
            client.url = URL.objectify(candidate)
            principal = client.principal()
            return str(principal.calendar_home_set.url)
        except caldav_error.AuthorizationError as exc:
            raise AuthError(AUTH_REFUSED) from exc
        except caldav_error.RateLimitError as exc:
            raise TransientError("The CalDAV server asked us to slow down.") from exc
        except (niquests.exceptions.Timeout, niquests.exceptions.ConnectionError) as exc:
            raise ConnectError(f"Cannot connect to {host}: is the address right?") from exc
        except (caldav_error.DAVError, etree.XMLSyntaxError, ValueError) as exc:
            # Any other answer means "no principal here": try the next candidate.
            logger.debug(
                "no CalDAV principal at %s: %s", urlsplit(candidate).path, type(exc).__name__
            )
    # The URL may itself be a calendar home (or a calendar): it lists calendars directly.
    return url


def list_calendars(
    dav: DAVSession, home: str, *, with_ctag: bool
) -> tuple[list[RemoteCalendar], dict[str, CalendarInfo]]:
    """The home's event calendars, and what each offers (by normalised path); `with_ctag`
    asks for every calendar's ctag in the same PROPFIND."""
    calendars, infos = [], {}
    body = CALENDAR_LIST_BODY.format(ctag=CALENDAR_LIST_CTAG if with_ctag else "")
    answer = dav.multistatus("PROPFIND", home, body, depth="1")
    for item in answer:
        prop = item.props
        if prop is None or prop.find("d:resourcetype/c:calendar", NS) is None:
            continue
        components = [
            c.get("name") for c in prop.findall("c:supported-calendar-component-set/c:comp", NS)
        ]
        if components and "VEVENT" not in components:
            continue
        url = urljoin(home, item.href)
        report_set = prop.find("d:supported-report-set", NS)
        if report_set is None:
            supports_sync = None
        else:
            supports_sync = any(
                etree.QName(r).localname == "sync-collection"
                for r in report_set.iterfind(".//d:supported-report/d:report/*", NS)
            )
        # Without a privilege set, assume writable: a refused write says so itself.
        privileges = prop.find("d:current-user-privilege-set", NS)
        writable = privileges is None or any(
            etree.QName(p).localname in ("all", "write", "write-content", "bind")
            for p in privileges.iterfind("d:privilege/*", NS)
        )
        ctag = ctag_of(item) if with_ctag else None
        infos[normalize_href(urlsplit(url).path)] = CalendarInfo(supports_sync, ctag)
        if len(calendars) >= MAX_CALENDARS:
            raise ProviderError(
                f"The calendar home {urlsplit(home).path} lists more than {MAX_CALENDARS:,} "
                "calendars; Caly syncs accounts up to that many."
            )
        calendars.append(
            RemoteCalendar(
                remote_id=url,
                name=(prop.findtext("d:displayname", namespaces=NS) or "").strip()
                or unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2]),
                color=(prop.findtext("ic:calendar-color", namespaces=NS) or "").strip()[:32],
                timezone=vtimezone_id(prop.findtext("c:calendar-timezone", namespaces=NS) or ""),
                writable=writable,
            )
        )
    if answer.truncated:
        # The calendars left out would read as removed on the server.
        raise ProviderError(
            f"The CalDAV server cut its list of calendars at {urlsplit(home).path} short "
            "(HTTP 507); no calendar was removed."
        )
    return calendars, infos


def ctag_of(item: Item) -> str:
    if item.props is None:
        return ""
    return (item.props.findtext("cs:getctag", namespaces=NS) or item.etag or "").strip()
