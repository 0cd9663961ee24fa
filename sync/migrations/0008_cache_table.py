"""The database cache table, so `migrate` alone gives every web process the same throttle counts.

`createcachetable` creates the table of each database cache in CACHES (the default,
`dbcache://caly_cache`) and leaves a table that exists alone; with CALY_CACHE_URL naming another
kind of cache it creates nothing.
"""

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("sync", "0007_reaper_schedule")]

    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop)]
