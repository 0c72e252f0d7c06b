from __future__ import annotations

from django import template

from controlplane import redaction

register = template.Library()


@register.filter
def shown_to(value, user) -> str:
    """{{ job.kwargs|shown_to:user }}: compact JSON, secret-looking values masked for
    every role below admin."""
    return redaction.json_text(value, user)
