"""Job targets from outside this repository: installed packages and configuration.

At start-up (web, nodes, Celery workers: whatever loads the apps), after the `targets`
modules of the installed apps, this imports

- every module named by an entry point in the group ``clustered_scheduler.targets``, so
  that installing a package of targets (``pip install ./our-targets``) is enough, and
- every module listed in ``SCHEDULER_TARGET_MODULES`` (comma-separated), for code on the
  path that is not packaged.

Importing a module runs its ``@register`` decorators. A module that cannot be imported
stops start-up: a node or worker without the code for its jobs would only fail their runs
later, one at a time.
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

ENTRY_POINT_GROUP = "clustered_scheduler.targets"

logger = logging.getLogger(__name__)


def entry_point_modules() -> list[tuple[str, str]]:
    """(module, where it was named) for each entry point of the group, sorted by name."""
    found = []
    for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=_key):
        dist = entry_point.dist.name if entry_point.dist is not None else "an unknown package"
        where = f"entry point {entry_point.name!r} of {dist} (group {ENTRY_POINT_GROUP})"
        # "pkg.targets" or "pkg.targets:attr": the module is what registers targets.
        found.append((entry_point.module, where))
    return found


def _key(entry_point: metadata.EntryPoint) -> tuple[str, str]:
    return entry_point.name, entry_point.value


def setting_modules() -> list[tuple[str, str]]:
    return [(name, "SCHEDULER_TARGET_MODULES") for name in settings.SCHEDULER_TARGET_MODULES]


def load_target_modules() -> list[str]:
    """Import every configured target module; returns their names in the order loaded."""
    loaded = []
    for module, where in [*entry_point_modules(), *setting_modules()]:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ImproperlyConfigured(
                f"Cannot import the job target module {module!r}, named by {where}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        loaded.append(module)
    if loaded:
        logger.debug("job target modules loaded: %s", ", ".join(loaded))
    return loaded
