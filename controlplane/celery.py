"""The Celery app: the execution engine when work outgrows the scheduler nodes.

PostgreSQL stays the source of truth; Celery only carries "run execution N" messages.
Workers: celery -A controlplane worker -Q scheduler
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["jobs"], related_name="celery_tasks")
