"""CalDAV: the provider (`provider.py`) and the DAV protocol it speaks (`dav.py`)."""

from sync.providers.caldav.provider import CalDAVProvider

__all__ = ["CalDAVProvider"]
