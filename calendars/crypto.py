"""Encryption at rest for account credentials (Fernet keys from CALY_ENCRYPTION_KEY, rotatable)."""

import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            "CALY_ENCRYPTION_KEY must be one or more comma-separated Fernet keys "
            '(make one with: python -c "from cryptography.fernet import Fernet; '
            'print(Fernet.generate_key().decode())")'
        ) from exc


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.CALY_ENCRYPTION_KEYS))


def encrypt(data: dict) -> str:
    return fernet().encrypt(json.dumps(data).encode()).decode()


class UnreadableCredentials(ImproperlyConfigured):
    """Stored credentials that no key in CALY_ENCRYPTION_KEY decrypts (a key rotated out)."""


def decrypt(token: str) -> dict:
    try:
        return json.loads(fernet().decrypt(token.encode()))
    except InvalidToken as exc:
        raise UnreadableCredentials(
            "Stored credentials cannot be decrypted with CALY_ENCRYPTION_KEY (wrong or rotated-out key)."
        ) from exc


def reencrypt(token: str) -> str:
    """Re-encrypt with the first (newest) key; used when rotating keys."""
    return fernet().rotate(token.encode()).decode()


class EncryptedJSONField(models.TextField):
    """A dict stored as a Fernet token; plaintext exists only in memory."""

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return {}
        return decrypt(value)

    def to_python(self, value):
        if isinstance(value, dict):
            return value
        if value in (None, ""):
            return {}
        return decrypt(value)

    def get_prep_value(self, value):
        if value in (None, {}):
            return ""
        return encrypt(value)
