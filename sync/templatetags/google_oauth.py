"""`{% google_connect_link %}`: the dashboard's "Connect Google Calendar" link, when set up."""

from django import template
from django.urls import reverse

from sync.oauth import google_oauth_enabled

register = template.Library()


@register.inclusion_tag("sync/google_connect.html")
def google_connect_link(account=None):
    """A link to connect a Google account, or to reconnect `account`; nothing if not set up."""
    if not google_oauth_enabled():
        return {"url": ""}
    if account is not None:
        return {"url": reverse("google-connect", args=[account.pk]), "reconnect": True}
    return {"url": reverse("google-connect"), "reconnect": False}
