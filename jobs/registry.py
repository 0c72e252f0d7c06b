"""The registry of callables a job may target, and the parameters each one declares.

Code declares targets with ``@register("name")`` in an app's ``targets`` module, which
is imported at start-up. Nothing typed into a form or an API body is ever imported: a
job names a registered target, and an unknown name is a validation error.

A target's signature is its contract: ``check_call`` validates arguments against the
parameter names, the required ones and these annotations: ``int``, ``float`` (an int
is accepted too), ``str``, ``bool``, ``list``, ``dict`` (parametrised or not), ``None``
and unions of them. Any other annotation, or none, accepts any JSON value. A target
declares which parameters an operator may override at run time (``overridable``);
naming its ``*args`` or ``**kwargs`` parameter there covers every value they collect.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from jobs import secrets

# JSON types a parameter can be declared as, and their names in error messages.
_JSON_TYPES = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict"}
_NONE = type(None)
_MISSING = object()


@dataclass(frozen=True)
class Param:
    name: str
    kind: inspect._ParameterKind
    #: The JSON types it accepts (NoneType for null); None: any value.
    accepts: tuple[type, ...] | None
    default: object = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING and self.kind not in _VARIADIC


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class Target:
    name: str
    func: Callable
    description: str
    params: tuple[Param, ...] = ()
    #: Parameters an operator may override at run time; any other needs a schedule editor.
    overridable: frozenset[str] = frozenset()

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def variadic(self, kind) -> Param | None:
        return next((p for p in self.params if p.kind == kind), None)


_targets: dict[str, Target] = {}


class UnknownTarget(LookupError):
    pass


def register(
    name: str, description: str = "", overridable: tuple[str, ...] = ()
) -> Callable[[Callable], Callable]:
    """Declare ``func`` as a job target called ``name``.

    ``overridable`` names the parameters an operator may change in a run-now; a name the
    signature does not have is a programming error, raised here at start-up.
    """

    def decorate(func: Callable) -> Callable:
        existing = _targets.get(name)
        if existing is not None and existing.func is not func:
            raise ValueError(f"job target {name!r} is already registered to {existing.func!r}")
        params = _params_of(func)
        unknown = set(overridable) - {p.name for p in params}
        if unknown:
            raise ValueError(f"job target {name!r} has no parameter {', '.join(sorted(unknown))}")
        text = description or ((func.__doc__ or "").strip().splitlines() or [""])[0]
        _targets[name] = Target(name, func, text, params, frozenset(overridable))
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


# --- signatures ------------------------------------------------------------------------


def _params_of(func: Callable) -> tuple[Param, ...]:
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an annotation that does not resolve: check names only
        hints = {}
    params = []
    for p in inspect.signature(func).parameters.values():
        default = _MISSING if p.default is inspect.Parameter.empty else p.default
        params.append(Param(p.name, p.kind, _accepted(hints.get(p.name)), default))
    return tuple(params)


def _accepted(annotation) -> tuple[type, ...] | None:
    """The JSON types an annotation allows, or None when it does not say (or says Any)."""
    if annotation is None:
        return None
    if annotation is _NONE:
        return (_NONE,)
    if annotation in _JSON_TYPES:
        return (annotation,)
    origin = typing.get_origin(annotation)
    if origin in (list, dict):
        return (origin,)
    if origin in (typing.Union, types.UnionType):
        members = [_accepted(arg) for arg in typing.get_args(annotation)]
        if any(m is None for m in members):
            return None
        return tuple(t for m in members for t in m)
    return None


def _type_name(value) -> str:
    if value is None:
        return "null"
    for kind, name in reversed(_JSON_TYPES.items()):  # bool before int
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _matches(value, accepts: tuple[type, ...] | None) -> bool:
    if accepts is None:
        return True
    if secrets.is_reference(value):
        # Resolved to the text of an environment variable when the run starts.
        return str in accepts
    if value is None:
        return _NONE in accepts
    if isinstance(value, bool):
        return bool in accepts
    if isinstance(value, int):
        return int in accepts or float in accepts
    return any(isinstance(value, kind) for kind in accepts if kind not in (bool, int, _NONE))


def _expected(accepts: tuple[type, ...]) -> str:
    names = [_JSON_TYPES.get(t, "null") for t in accepts]
    return " or ".join(dict.fromkeys(names))


def bind(target: Target, args: list, kwargs: dict) -> tuple[dict, dict[str, list[str]]]:
    """Match arguments to the target's parameters.

    Returns (values, errors): ``values`` maps each parameter to what the call gives it
    (its default when not given; a tuple for ``*args``, a dict for ``**kwargs``), and
    ``errors`` lists messages under "args" or "kwargs", each naming the parameter.
    """
    errors: dict[str, list[str]] = {}
    values: dict = {}
    positional = [p for p in target.params if p.kind in _POSITIONAL]
    var_args = target.variadic(inspect.Parameter.VAR_POSITIONAL)
    var_kwargs = target.variadic(inspect.Parameter.VAR_KEYWORD)

    def check(field: str, label: str, value, param: Param | None) -> None:
        if param is not None and not _matches(value, param.accepts):
            errors.setdefault(field, []).append(
                f"{label}: expected {_expected(param.accepts)}, got {_type_name(value)}."
            )

    extra_args = []
    for index, value in enumerate(args):
        if index < len(positional):
            param = positional[index]
            values[param.name] = value
            check("args", f"{param.name} (args[{index}])", value, param)
        elif var_args is not None:
            extra_args.append(value)
            check("args", f"{var_args.name} (args[{index}])", value, var_args)
        else:
            errors.setdefault("args", []).append(
                f"args[{index}]: {target.name} takes at most {len(positional)} positional "
                "argument(s)."
            )
    extra_kwargs = {}
    for key, value in kwargs.items():
        param = target.param(key)
        takes_keyword = param is not None and param.kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            *_VARIADIC,
        )
        if takes_keyword and key in values:
            errors.setdefault("kwargs", []).append(f"{key}: given in args too.")
        elif takes_keyword:
            values[key] = value
            check("kwargs", key, value, param)
        elif var_kwargs is not None:
            extra_kwargs[key] = value
            check("kwargs", key, value, var_kwargs)
        else:
            errors.setdefault("kwargs", []).append(f"{key}: {target.name} has no such parameter.")
    for param in target.params:
        if param.kind in _VARIADIC or param.name in values:
            continue
        if param.required:
            field = "args" if param.kind == inspect.Parameter.POSITIONAL_ONLY else "kwargs"
            errors.setdefault(field, []).append(f"{param.name}: this parameter is required.")
        else:
            values[param.name] = param.default
    if var_args is not None:
        values[var_args.name] = tuple(extra_args)
    if var_kwargs is not None:
        values[var_kwargs.name] = extra_kwargs
    return values, errors


def check_call(target: Target, args: list, kwargs: dict) -> None:
    """Raise ValidationError (keyed "args"/"kwargs") unless the call fits the signature."""
    _values, errors = bind(target, args, kwargs)
    if errors:
        raise ValidationError(errors)


def overridden(target: Target, own: tuple[list, dict], given: tuple[list, dict]) -> set[str]:
    """The parameters whose value differs between the job's own arguments and a run's."""
    before, _ = bind(target, *own)
    after, _ = bind(target, *given)
    return {name for name in before.keys() | after.keys() if before.get(name, _MISSING)
            != after.get(name, _MISSING)}  # fmt: skip
