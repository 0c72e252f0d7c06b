from __future__ import annotations

import json

from django import template

from controlplane import redaction

register = template.Library()


@register.filter
def shown_to(value, user) -> str:
    """{{ job.kwargs|shown_to:user }}: compact JSON, secret-looking values masked for
    every role below admin."""
    return redaction.json_text(value, user)


@register.filter
def pretty_shown_to(value, user) -> str:
    """{{ execution.result|pretty_shown_to:user }}: indented JSON, secret-looking values
    masked for every role below admin."""
    shown = redaction.for_user(value, user)
    return json.dumps(shown, indent=2, ensure_ascii=False, default=str)


@register.filter
def text_shown_to(text, user) -> str:
    """{{ execution.error|text_shown_to:user }}: free text with the values after
    secret-looking keys (password=..., "token": "...") masked below admin."""
    return redaction.text_for_user(text, user)
