"""{% load durations %}: controlplane.durations as template filters.

{{ seconds|duration }}   {{ lag_ms|duration_ms }}   {{ delta|relative }}   {{ age|ago }}
"""

from __future__ import annotations

from django import template

from controlplane import durations

register = template.Library()

register.filter("duration", durations.duration)
register.filter("duration_ms", durations.duration_ms)
register.filter("relative", durations.relative)
register.filter("ago", durations.ago)
