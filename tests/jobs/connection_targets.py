"""A job target for tests that prints how its process's database connection is set up.
Imported by nodes and workers through SCHEDULER_TARGET_MODULES."""

from __future__ import annotations

from django.db import connection

from jobs.registry import register


@register("test.connection_settings", "Print the connection's enable_seqscan setting")
def connection_settings():
    with connection.cursor() as cursor:
        cursor.execute("SHOW enable_seqscan")
        print(f"enable_seqscan={cursor.fetchone()[0]}")
