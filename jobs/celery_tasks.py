"""Celery tasks of this project (discovered by controlplane.celery)."""

from __future__ import annotations

from pathlib import Path

from celery import shared_task

from jobs import worker


@shared_task(name="jobs.run_execution", ignore_result=True, bind=True)
def run_execution(self, execution_id: int) -> str:
    """Run execution ``execution_id`` (a registered callable or a named Celery task)."""
    return worker.run_execution(execution_id, self.request.hostname)


@shared_task(name="demo.named_append", ignore_result=True)
def named_append(path: str, line: str = "named") -> None:
    """A plain Celery task, as teams coming from django-celery-beat have (for the demo
    and the tests): a job can run it by name."""
    with Path(path).open("a") as f:
        f.write(f"{line}\n")


@shared_task(name="bench.noop", ignore_result=True)
def bench_noop() -> None:
    """Nothing at all, with no bookkeeping: the bench's bare-Celery baseline, run through
    the same broker and workers as jobs.run_execution (see jobs/bench.py)."""
