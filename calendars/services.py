"""Writes of the synced data's own settings: the secrets of the private iCalendar feeds.

A feed secret is `secrets.token_urlsafe(32)` (256 random bits): guessing one is hopeless, and
the database's unique constraints keep each one naming a single feed. Why they are stored as
they are is said on `calendars.models.UserFeed`.
"""

from __future__ import annotations

import secrets

from calendars.models import Calendar, UserFeed


def feed_secret_new() -> str:
    return secrets.token_urlsafe(32)


def calendar_feed_secret(*, calendar: Calendar) -> str:
    """The secret of `calendar`'s feed, made the first time it is asked for."""
    if calendar.feed_secret:
        return calendar.feed_secret
    # Only if it has none: of two requests asking at once, one sets it and both answer that one.
    Calendar.objects.filter(pk=calendar.pk, feed_secret__isnull=True).update(
        feed_secret=feed_secret_new()
    )
    calendar.feed_secret = (
        Calendar.objects.filter(pk=calendar.pk).values_list("feed_secret", flat=True).first()
    )
    return calendar.feed_secret or ""


def calendar_feed_rotate(*, calendar: Calendar) -> str:
    """A new secret for `calendar`'s feed; the old URL stops working at once."""
    secret = feed_secret_new()
    # Only this column: a sync may be storing the calendar's cursor meanwhile.
    Calendar.objects.filter(pk=calendar.pk).update(feed_secret=secret)
    calendar.feed_secret = secret
    return secret


def user_feed_secret(*, user) -> str:
    """The secret of `user`'s merged feed, made the first time it is asked for."""
    feed, _ = UserFeed.objects.get_or_create(owner=user, defaults={"secret": feed_secret_new()})
    return feed.secret


def user_feed_rotate(*, user) -> str:
    """A new secret for `user`'s merged feed; the old URL stops working at once."""
    feed, _ = UserFeed.objects.update_or_create(owner=user, defaults={"secret": feed_secret_new()})
    return feed.secret
