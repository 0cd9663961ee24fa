"""Google Calendar: the provider (`provider.py`), the event JSON and its mapping (`events.py`),
the HTTP the Google libraries send through (`transport.py`) and Google's errors (`errors.py`)."""

from sync.providers.google.provider import SCOPE, GoogleProvider

__all__ = ["SCOPE", "GoogleProvider"]
