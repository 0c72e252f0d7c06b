# The Celery app is loaded with Django, so scheduler nodes can publish to it.
from controlplane.celery import app as celery_app

__all__ = ["celery_app"]
