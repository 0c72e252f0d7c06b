"""Job targets of a team's own package, registered when the scheduler starts.

A target is a plain function. Its parameters, with their types and defaults, are what a
job's `args` and `kwargs` (and a run-now override) fill in.
"""

from __future__ import annotations

from pathlib import Path

from jobs.context import current_execution
from jobs.registry import register


@register("example.write_report", "Append a report line for `region` to the file `path`")
def write_report(path: str, region: str = "eu", copies: int = 1, dry_run: bool = False) -> int:
    """Append `copies` lines naming the region and this execution; returns lines written."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, not {copies}")
    if dry_run:
        print(f"dry run: would write {copies} line(s) for {region} to {path}")
        return 0
    execution = current_execution()
    with Path(path).open("a") as f:
        for _ in range(int(copies)):
            day = f"{execution.scheduled_for:%Y-%m-%d}"  # the fire's day, not this clock's
            f.write(f"report {region} {day} execution {execution.execution_id}\n")
    return int(copies)
