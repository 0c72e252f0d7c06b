"""The one retry policy, for both executors: exponential backoff with jitter."""

from __future__ import annotations

import random

from django.conf import settings


def retry_delay(attempt: int, max_attempts: int, backoff: float) -> float | None:
    """Seconds to wait before the next attempt, or None when no attempt is left."""
    if attempt >= max_attempts:
        return None
    jitter = random.uniform(0, settings.SCHEDULER_RETRY_JITTER)
    return backoff * (2 ** (attempt - 1)) * (1 + jitter)
