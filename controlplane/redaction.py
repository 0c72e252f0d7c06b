"""Hiding argument values that look secret from everyone below the admin role.

A value is hidden when its key matches SCHEDULER_REDACT_KEYS (case-insensitive,
anywhere in the key: ``db_password`` matches ``password``), at any depth of a job's or
an execution's args and kwargs. Positional values have no key: pass secrets by keyword,
or better as ``{"$secret": "NAME"}`` references (jobs/secrets.py). One function,
``redact``, serves the templates (the ``shown_to`` filter), the API serializers, the
audit log and the logs.
"""

from __future__ import annotations

import functools
import json
import logging
import re

from django.conf import settings

from controlplane.roles import is_schedule_editor

MASK = "••••"
# The parts of an audit entry's before/after that hold a job's or a run's arguments.
ARGUMENT_KEYS = ("args", "kwargs")


@functools.cache
def _pattern(source: str) -> re.Pattern:
    return re.compile(source, re.IGNORECASE)


def is_secret_key(key) -> bool:
    return isinstance(key, str) and bool(_pattern(settings.SCHEDULER_REDACT_KEYS).search(key))


def redact(value):
    """A copy of a JSON value with every value under a secret-looking key masked."""
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


# A key and its value in free text: `password=hunter2`, `token: abc`, `"api_key": "k"`,
# `'secret': 's'` (a Python dict's repr). The key is a word or a quoted string; the value
# a quoted string (its quotes kept) or everything up to a space or a separator. Quoted
# values are bounded so that an unclosed quote costs a bounded scan, never a quadratic one.
_KEY = re.compile(
    r"""(?P<key>"[^"\n]{1,100}"|'[^'\n]{1,100}'|(?<![\w.-])[A-Za-z_][\w.-]{0,99})"""
    r"""(?P<sep>\s*[:=]\s*)"""
)
_VALUE = re.compile(
    r""""(?:[^"\\\n]|\\.){0,4096}"|'(?:[^'\\\n]|\\.){0,4096}'|["']?[^\s,;&'"}\])]+"""
)
# The password in a URL's user information: scheme://user:password@host.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s/@]+(?=@)")
# An HTTP Authorization header's credentials, after its scheme: `Authorization: Bearer x`.
_AUTHORIZATION = re.compile(
    r"(?P<head>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:[A-Za-z-]+ )?)[^\s\"',;]+",
    re.IGNORECASE,
)


def _mask_pairs(text: str) -> str:
    parts, done, pos = [], 0, 0
    while (key := _KEY.search(text, pos)) is not None:
        pos = key.end()
        # A key that does not look secret: its value is read on, for keys inside it
        # ("connect: password=x", "config={'token': 't'}").
        if not is_secret_key(key["key"].strip("\"'")):
            continue
        value = _VALUE.match(text, pos)
        if value is None:
            continue
        found = value[0]
        quoted = len(found) > 1 and found[0] in "\"'" and found[-1] == found[0]
        quote = found[0] if quoted else ""
        parts += [text[done:pos], f"{quote}{MASK}{quote}"]
        done = pos = value.end()
    return "".join(parts) + text[done:]


def redact_text(text: str) -> str:
    """Free text (a log line, a progress message) with the values after secret-looking
    keys masked, and Authorization credentials and passwords in URLs. What a job writes
    in other ways (a bare value, a key the pattern does not name) cannot be recognised."""
    if not text:
        return text
    text = _mask_pairs(text)
    text = _AUTHORIZATION.sub(rf"\g<head>{MASK}", text)
    return _URL_PASSWORD.sub(rf"\g<head>{MASK}", text)


def text_for_user(text: str, user) -> str:
    """``text`` as ``user`` may see it: whole for the admin role, else redact_text."""
    return text if is_schedule_editor(user) else redact_text(text)


def for_user(value, user):
    """``value`` as ``user`` may see it: whole for the admin role, else redacted."""
    return value if is_schedule_editor(user) else redact(value)


def audit_values(value, user):
    """An audit entry's before or after as ``user`` may see it: the arguments inside
    (a job's args/kwargs, a run-now's) are redacted below the admin role."""
    if is_schedule_editor(user) or not isinstance(value, dict):
        return value
    return {k: redact(v) if k in ARGUMENT_KEYS else v for k, v in value.items()}


def audit_text(value, user) -> str:
    """An audit entry's before or after as compact JSON for ``user``; empty for None."""
    return (
        ""
        if value is None
        else json.dumps(audit_values(value, user), default=str, ensure_ascii=False)
    )


def json_text(value, user) -> str:
    """Compact JSON for display, redacted for ``user``; empty for None."""
    return (
        "" if value is None else json.dumps(for_user(value, user), default=str, ensure_ascii=False)
    )


class RedactingFilter(logging.Filter):
    """Masks secret-looking values in the dict and list arguments of log records.

    ``log.info("running %s with %s", name, kwargs)`` logs kwargs redacted. Text already
    formatted into the message cannot be seen into: log arguments, not f-strings.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = redact(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, dict | list) else a for a in record.args)
        return True
