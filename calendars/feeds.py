"""Private iCalendar feeds: `/feeds/<secret>.ics`, read without a login by whoever has the URL.

A secret opens one calendar's feed (`feed_url` of a calendar) or a user's merged feed of every
selected calendar (`GET /api/feed/`). Answers carry `ETag` and `Last-Modified`, and a
conditional GET that matches is a 304 costing a few aggregate queries, not the feed.
"""

from __future__ import annotations

import re

from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django.utils.cache import get_conditional_response
from django.utils.http import http_date, quote_etag
from django.views.decorators.http import require_http_methods

from calendars import feed_selectors

CONTENT_TYPE = "text/calendar; charset=utf-8"
# What secrets.token_urlsafe gives; anything else is not worth a query.
_SECRET = re.compile(r"[A-Za-z0-9_-]{20,64}")


def feed_url(request, secret: str) -> str:
    """The absolute URL of the feed `secret` opens, on the host the request came to."""
    return request.build_absolute_uri(reverse("calendar-feed", kwargs={"secret": secret}))


@require_http_methods(["GET", "HEAD"])
def calendar_feed(request, secret: str):
    feed = feed_selectors.feed_for_secret(secret=secret) if _SECRET.fullmatch(secret) else None
    if feed is None:
        raise Http404("No such feed.")
    version = feed_selectors.feed_version(feed=feed)
    last_modified = int(version.last_modified.timestamp())
    headers = {
        "ETag": quote_etag(version.etag),
        "Last-Modified": http_date(last_modified),
        # The URL is a secret: no shared cache may keep the answer, and clients revalidate.
        "Cache-Control": "private, no-cache",
    }
    probe = HttpResponse(content_type=CONTENT_TYPE, headers=headers)
    answer = get_conditional_response(
        request, etag=headers["ETag"], last_modified=last_modified, response=probe
    )
    if answer is not probe or request.method == "HEAD":
        return answer  # 304 (or 412 for a failed If-Match), or headers only
    return StreamingHttpResponse(
        feed_selectors.feed_ical(feed=feed), content_type=CONTENT_TYPE, headers=headers
    )
