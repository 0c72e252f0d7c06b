"""The registry of callables a job may target.

Code declares targets with ``@register("name")`` in an app's ``targets`` module, which
is imported at start-up. Nothing typed into a form or an API body is ever imported: a
job names a registered target, and an unknown name is a validation error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    func: Callable
    description: str


_targets: dict[str, Target] = {}


class UnknownTarget(LookupError):
    pass


def register(name: str, description: str = "") -> Callable[[Callable], Callable]:
    """Declare ``func`` as a job target called ``name``."""

    def decorate(func: Callable) -> Callable:
        existing = _targets.get(name)
        if existing is not None and existing.func is not func:
            raise ValueError(f"job target {name!r} is already registered to {existing.func!r}")
        text = description or ((func.__doc__ or "").strip().splitlines() or [""])[0]
        _targets[name] = Target(name=name, func=func, description=text)
        return func

    return decorate


def get_target(name: str) -> Target:
    try:
        return _targets[name]
    except KeyError:
        raise UnknownTarget(f"{name!r} is not a registered job target") from None


def is_registered(name: str) -> bool:
    return name in _targets


def target_names() -> list[str]:
    return sorted(_targets)


def target_choices() -> list[tuple[str, str]]:
    return [(name, name) for name in target_names()]
