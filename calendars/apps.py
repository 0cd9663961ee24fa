from django.apps import AppConfig
from django.db.models.signals import post_migrate, pre_migrate


class CalendarsConfig(AppConfig):
    name = "calendars"
    verbose_name = "Calendars"

    def ready(self):
        # SQLite only: the change feed's triggers live outside migrations (migration 0006 says
        # why): dropped before `migrate` rebuilds tables, created again once it is done.
        pre_migrate.connect(_sqlite_triggers, sender=self, dispatch_uid="calendars-pre")
        post_migrate.connect(_sqlite_triggers, sender=self, dispatch_uid="calendars-post")


def _sqlite_triggers(sender, using, signal, plan=None, **kwargs):
    from importlib import import_module

    from django.db import connections

    connection = connections[using]
    if connection.vendor != "sqlite":
        return
    migration = import_module("calendars.migrations.0006_event_change_triggers")
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
        if "calendars_eventchange" not in tables or "calendars_event" not in tables:
            return
        if signal is pre_migrate:
            migration.sqlite_triggers_drop(cursor)
        else:
            migration.sqlite_triggers_create(cursor)
