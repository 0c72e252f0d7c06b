"""Secret references in job arguments, resolved only where and when a run starts.

A job's args or kwargs may hold ``{"$secret": "BILLING_API_KEY"}`` instead of a secret.
The database, the audit log, the dashboard, the API and the logs only ever see that
reference. The node or worker that runs the execution replaces it with the value of its
own environment variable ``SCHEDULER_SECRET_BILLING_API_KEY`` (the prefix is the setting
``SCHEDULER_SECRET_ENV_PREFIX``) just before it calls the target, and keeps the value
nowhere else. The prefix keeps a job from reading the process's own configuration
(``SECRET_KEY``, ``DATABASE_URL``) by naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping

from django.conf import settings

REFERENCE_KEY = "$secret"
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class UnknownSecret(LookupError):
    """A reference to a secret the running process's environment does not have."""


def is_reference(value) -> bool:
    """Whether ``value`` is (or tries to be) a secret reference: a dict with "$secret"."""
    return isinstance(value, dict) and REFERENCE_KEY in value


def env_name(name: str) -> str:
    """The environment variable a secret of this name is read from."""
    return settings.SCHEDULER_SECRET_ENV_PREFIX + name


def references(value) -> Iterator[dict]:
    """Every secret reference inside a JSON value, however deep."""
    stack = [value]
    while stack:
        item = stack.pop()
        if is_reference(item):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def reference_errors(value) -> list[str]:
    """What is wrong with the references inside ``value`` (empty when nothing is)."""
    errors = []
    for ref in references(value):
        name = ref[REFERENCE_KEY]
        if len(ref) != 1:
            errors.append('A secret reference has only the key "$secret", e.g. '
                          '{"$secret": "BILLING_API_KEY"}.')  # fmt: skip
        elif not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            errors.append(
                f"{str(name)[:130]!r} is not a secret name: letters, digits and _, not "
                "starting with a digit, at most 128 characters."
            )
    return errors


def resolve_secrets(
    args: list, kwargs: dict, environ: Mapping[str, str] | None = None
) -> tuple[list, dict]:
    """Copies of args and kwargs with each secret reference replaced by its value.

    Raises UnknownSecret naming the secret (never a value) when one is not set, so the run
    fails with a clear error. The stored arguments are left as they are.
    """
    environ = os.environ if environ is None else environ
    return _resolve(args, environ), _resolve(kwargs, environ)


def _resolve(value, environ: Mapping[str, str]):
    if is_reference(value):
        problems = reference_errors(value)
        if problems:
            raise UnknownSecret(problems[0])
        variable = env_name(value[REFERENCE_KEY])
        if variable not in environ:
            raise UnknownSecret(
                f"secret {value[REFERENCE_KEY]!r} is not set on this node: its environment "
                f"has no {variable}"
            )
        return environ[variable]
    if isinstance(value, dict):
        return {key: _resolve(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, environ) for item in value]
    return value


def secret_values(args: list, kwargs: dict, environ: Mapping[str, str] | None = None) -> list[str]:
    """The values the secret references in args and kwargs resolve to (those that are set),
    so that a run's captured output can mask them."""
    if not args and not kwargs:  # most runs: nothing to walk (this is on the claim path)
        return []
    environ = os.environ if environ is None else environ
    values = []
    for ref in references([args, kwargs]):
        name = ref.get(REFERENCE_KEY)
        if isinstance(name, str):
            value = environ.get(env_name(name))
            if value:
                values.append(value)
    return values
