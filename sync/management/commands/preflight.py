"""Check that the database and the broker answer before starting Caly's processes."""

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.utils import OperationalError

from caly.celery import app

HINTS = {
    "postgresql": "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "sqlite": "check that the directory of the SQLite file is writable",
}


class Command(BaseCommand):
    help = "Fail fast, with one clear line, if the database or RabbitMQ cannot be reached."

    def handle(self, *args, **options):
        try:
            connection.ensure_connection()
        except OperationalError as exc:
            vendor = connection.vendor
            raise CommandError(
                f"Cannot reach the database ({vendor}: {str(exc).strip().splitlines()[0]}); "
                f"{HINTS.get(vendor, 'check DATABASE_URL')}."
            ) from None
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
        except Exception as exc:
            raise CommandError(
                f"Cannot reach RabbitMQ at {conn.as_uri()} ({type(exc).__name__}); "
                "start it with: rabbitmq-server -detached"
            ) from None
        self.stdout.write(f"database ({connection.vendor}) and RabbitMQ ({conn.as_uri()}) are up")
