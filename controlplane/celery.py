"""The Celery app: the execution engine when work outgrows the scheduler nodes.

PostgreSQL stays the source of truth; Celery only carries "run execution N" messages.
Workers: celery -A controlplane worker -Q scheduler
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["jobs"], related_name="celery_tasks")


@worker_process_init.connect
def _keep_database_connections(**kwargs) -> None:
    # Only in worker processes: the web and the nodes keep their own connection handling.
    from django.conf import settings

    for database in settings.DATABASES.values():
        database["CONN_MAX_AGE"] = settings.CELERY_WORKER_DB_CONN_MAX_AGE
        # No health check (a SELECT 1 before every task: a tenth of a no-op's time): a kept
        # connection found broken at the claim, or at any later step, is replaced and the
        # step retried (jobs.worker, jobs.reconnect).
        database["CONN_HEALTH_CHECKS"] = False
    from jobs.reconnect import use_scheduler_connection_options

    use_scheduler_connection_options()
