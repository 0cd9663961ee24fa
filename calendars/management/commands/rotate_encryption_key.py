"""Re-encrypt every account's stored credentials with the first key of CALY_ENCRYPTION_KEY."""

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from calendars import crypto
from calendars.models import Account

BATCH = 500


class Command(BaseCommand):
    help = (
        "Rotate the credentials key: put the new key first in CALY_ENCRYPTION_KEY "
        "(new,old), run this, then remove the old key. Safe to run again."
    )

    def handle(self, *args, **options):
        newest = Fernet(settings.CALY_ENCRYPTION_KEYS[0].encode())
        table = connection.ops.quote_name(Account._meta.db_table)
        column = connection.ops.quote_name(Account._meta.get_field("credentials").column)
        pk = connection.ops.quote_name(Account._meta.pk.column)
        rotated = current = 0
        unreadable: list[int] = []
        last = 0
        while True:
            # The raw column: the model field would decrypt it.
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT {pk}, {column} FROM {table} WHERE {pk} > %s AND {column} <> '' "
                    f"ORDER BY {pk} LIMIT %s",
                    [last, BATCH],
                )
                rows = cursor.fetchall()
            if not rows:
                break
            last = rows[-1][0]
            for account_id, token in rows:
                try:
                    newest.decrypt(token.encode())
                    current += 1
                    continue
                except InvalidToken:
                    pass
                try:
                    fresh = crypto.reencrypt(token)
                except InvalidToken:
                    unreadable.append(account_id)
                    continue
                with transaction.atomic(), connection.cursor() as cursor:
                    # Only if nobody changed the credentials meanwhile (a worker saving a
                    # refreshed token encrypts with the new key already).
                    cursor.execute(
                        f"UPDATE {table} SET {column} = %s WHERE {pk} = %s AND {column} = %s",
                        [fresh, account_id, token],
                    )
                    rotated += cursor.rowcount
        self.stdout.write(
            f"Re-encrypted the credentials of {rotated} account(s) with the first key; "
            f"{current} already used it."
        )
        if unreadable:
            raise CommandError(
                "No key in CALY_ENCRYPTION_KEY decrypts the credentials of account(s) "
                f"{', '.join(map(str, unreadable))}; they were left as they are. Keep the old "
                "key until these accounts are reconnected."
            )
