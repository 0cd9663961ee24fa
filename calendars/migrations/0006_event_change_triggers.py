"""The database records every change of calendars_event in calendars_eventchange (the change feed).

PostgreSQL: one statement-level trigger per kind of statement, reading the statement's rows from
its transition table, so a sync's batch of 500 upserts costs one more INSERT, not 500; each
change carries its transaction's id (pg_current_xact_id) for the feed's ordering. SQLite (one
writer at a time): row-level triggers, transaction id 0 — created after every `migrate` and
dropped before it (`calendars.apps`), since SQLite rebuilds a table to alter it and a trigger
naming a table being rebuilt stops the migration.
"""

from django.db import migrations

COLUMNS = "owner_id, account_id, calendar_id, event_id, uid, recurrence_id, kind, txid, created_at"

POSTGRES = f"""
CREATE FUNCTION calendars_event_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO calendars_eventchange ({COLUMNS})
        SELECT a.owner_id, a.id, e.calendar_id, e.id, e.uid, e.recurrence_id, 'delete',
               pg_current_xact_id()::text::bigint, now()
        FROM old_rows e
        JOIN calendars_calendar c ON c.id = e.calendar_id
        JOIN calendars_account a ON a.id = c.account_id;
    ELSE
        INSERT INTO calendars_eventchange ({COLUMNS})
        SELECT a.owner_id, a.id, e.calendar_id, e.id, e.uid, e.recurrence_id,
               CASE WHEN e.deleting THEN 'delete' ELSE 'upsert' END,
               pg_current_xact_id()::text::bigint, now()
        FROM new_rows e
        JOIN calendars_calendar c ON c.id = e.calendar_id
        JOIN calendars_account a ON a.id = c.account_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER calendars_event_inserted AFTER INSERT ON calendars_event
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION calendars_event_changed();
CREATE TRIGGER calendars_event_updated AFTER UPDATE ON calendars_event
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION calendars_event_changed();
CREATE TRIGGER calendars_event_deleted AFTER DELETE ON calendars_event
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION calendars_event_changed();
"""
POSTGRES_REVERSE = """
DROP TRIGGER calendars_event_inserted ON calendars_event;
DROP TRIGGER calendars_event_updated ON calendars_event;
DROP TRIGGER calendars_event_deleted ON calendars_event;
DROP FUNCTION calendars_event_changed();
"""


def _sqlite_trigger(operation: str, row: str, kind: str) -> str:
    name = {"INSERT": "inserted", "UPDATE": "updated", "DELETE": "deleted"}[operation]
    return f"""
CREATE TRIGGER IF NOT EXISTS calendars_event_{name} AFTER {operation} ON calendars_event BEGIN
    INSERT INTO calendars_eventchange ({COLUMNS})
    SELECT a.owner_id, a.id, {row}.calendar_id, {row}.id, {row}.uid, {row}.recurrence_id, {kind},
           0, strftime('%Y-%m-%d %H:%M:%f', 'now')
    FROM calendars_calendar c JOIN calendars_account a ON a.id = c.account_id
    WHERE c.id = {row}.calendar_id;
END;"""


UPSERT = "CASE WHEN NEW.deleting THEN 'delete' ELSE 'upsert' END"
SQLITE = [
    _sqlite_trigger("INSERT", "NEW", UPSERT),
    _sqlite_trigger("UPDATE", "NEW", UPSERT),
    _sqlite_trigger("DELETE", "OLD", "'delete'"),
]


def sqlite_triggers_create(cursor) -> None:
    for statement in SQLITE:
        cursor.execute(statement)


def sqlite_triggers_drop(cursor) -> None:
    for name in ("inserted", "updated", "deleted"):
        cursor.execute(f"DROP TRIGGER IF EXISTS calendars_event_{name}")


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_REVERSE)


class Migration(migrations.Migration):
    dependencies = [("calendars", "0005_event_changes")]

    operations = [migrations.RunPython(create, drop)]
