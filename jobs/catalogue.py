"""The target catalogue: what each registered target does, what it takes, which jobs use it.

Read by the dashboard's targets page, the job form's help and ``GET /api/v1/targets/``,
so an operator sees one description of a target wherever they meet it.
"""

from __future__ import annotations

import inspect
import json
from collections import defaultdict

from jobs import registry
from jobs.models import Job

# The API's names for a parameter's kind: how a job passes it (args, kwargs, or either).
KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional_or_keyword",
    inspect.Parameter.KEYWORD_ONLY: "keyword",
    inspect.Parameter.VAR_POSITIONAL: "var_positional",
    inspect.Parameter.VAR_KEYWORD: "var_keyword",
}
_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict"}


def type_text(accepts: tuple[type, ...] | None) -> str:
    """The JSON types a parameter accepts, as the registry checks them ("any" when untyped)."""
    if accepts is None:
        return "any"
    return " | ".join(dict.fromkeys(_TYPE_NAMES.get(t, "null") for t in accepts))


def _default(param: registry.Param) -> dict:
    if param.required or param.kind in (
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ):
        return {"has_default": False, "default": None}
    try:
        json.dumps(param.default)
    except (TypeError, ValueError):
        # A default no job could write (an object): shown as Python writes it.
        return {"has_default": True, "default": repr(param.default)}
    return {"has_default": True, "default": param.default}


def describe_target(target: registry.Target, jobs: list[dict]) -> dict:
    """One catalogue entry: the target's contract and the jobs (id, name) that name it."""
    return {
        "name": target.name,
        "description": target.description,
        "module": target.func.__module__,
        "parameters": [
            {
                "name": param.name,
                "kind": KINDS[param.kind],
                "type": type_text(param.accepts),
                "required": param.required,
                **_default(param),
                "overridable": param.name in target.overridable,
            }
            for param in target.params
        ],
        "jobs": jobs,
    }


def jobs_by_target(names: list[str] | None = None) -> dict[str, list[dict]]:
    """The jobs naming each target, by name (one query)."""
    qs = Job.objects.exclude(target="")
    if names is not None:
        qs = qs.filter(target__in=names)
    found: dict[str, list[dict]] = defaultdict(list)
    for job_id, name, target in qs.order_by("name").values_list("id", "name", "target"):
        found[target].append({"id": job_id, "name": name})
    return found


def catalogue() -> list[dict]:
    """Every registered target, by name, with the jobs that use it."""
    names = registry.target_names()
    jobs = jobs_by_target()
    return [describe_target(registry.get_target(name), jobs.get(name, [])) for name in names]


def entry(name: str) -> dict:
    """The catalogue entry of one target; raises registry.UnknownTarget."""
    target = registry.get_target(name)
    return describe_target(target, jobs_by_target([name]).get(name, []))


def unregistered_targets() -> dict[str, list[dict]]:
    """Targets that jobs name but this process has not registered (code removed or not
    installed here): those jobs would fail at their next run."""
    known = set(registry.target_names())
    return {name: jobs for name, jobs in jobs_by_target().items() if name not in known}
