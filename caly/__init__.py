"""Caly: keeps a copy of users' CalDAV and Google calendars in PostgreSQL."""

from caly.celery import app as celery_app

__all__ = ("celery_app",)
