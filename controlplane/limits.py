"""Bounds on what clients send: JSON nesting, NUL characters, sizes.

Shared by the API's JSON parser, the forms and the model validators. The walk is a loop
over an explicit stack, not recursion, so no input can raise RecursionError here.
"""

from __future__ import annotations

import json

NUL = "\x00"


class InputError(ValueError):
    """Input outside the bounds; the message says which, for the client."""


def check_json(value, max_depth: int, refuse_nul: bool = True) -> None:
    """Refuse a decoded JSON value nested deeper than ``max_depth`` or holding U+0000.

    Depth counts containers: ``[]`` and ``{}`` are 1 deep, ``[[1]]`` is 2.
    """
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if refuse_nul and NUL in item:
                raise InputError("Text must not contain U+0000 (NUL).")
        elif isinstance(item, dict | list):
            depth += 1
            if depth > max_depth:
                raise InputError(f"Nested deeper than {max_depth} levels.")
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth) for child in item.values())
            else:
                stack.extend((child, depth) for child in item)


def json_size(value) -> int:
    """Bytes of the value as compact UTF-8 JSON (what a limit on stored arguments counts)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def loads(text: str | bytes, max_depth: int, refuse_nul: bool = True):
    """json.loads, then check_json; every failure is an InputError with a clear message.

    The C decoder recurses: input nested a few thousand levels deep raises RecursionError
    before any depth check could run, so that is caught and reported the same way.
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise InputError(f"Not valid JSON: {e.msg} (line {e.lineno} column {e.colno}).") from None
    except RecursionError:
        raise InputError(f"Nested deeper than {max_depth} levels.") from None
    except UnicodeDecodeError:
        raise InputError("Not valid UTF-8.") from None
    check_json(value, max_depth, refuse_nul)
    return value


def _refuse_constant(name: str):
    # NaN and Infinity are not JSON, and PostgreSQL's jsonb cannot store them.
    raise InputError(f"{name} is not a JSON value.")
