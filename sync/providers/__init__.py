"""Registry of calendar providers: `provider_for(account)` picks the implementation."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from django.conf import settings

from sync.providers.base import Provider

if TYPE_CHECKING:
    from calendars.models import Account

# The built-in providers, name -> "module:Class"; imported on first use so one vendor's library
# cannot break another vendor's syncs.
REGISTRY: dict[str, str] = {
    "caldav": "sync.providers.caldav:CalDAVProvider",
    "google": "sync.providers.google:GoogleProvider",
}


def provider_class(name: str) -> type[Provider]:
    # Then those a settings module adds the same way (tests/settings.py: the fake provider).
    path = REGISTRY.get(name) or settings.CALY_EXTRA_PROVIDERS[name]
    module, _, cls = path.partition(":")
    return getattr(import_module(module), cls)


def provider_for(account: Account) -> Provider:
    return provider_class(account.provider)(
        url=account.url,
        username=account.username,
        credentials=account.credentials,
        home_url=account.home_url,
    )
