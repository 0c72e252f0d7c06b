"""A job target for tests that prints after its run was recorded finished (past its
timeout). Imported by a node through SCHEDULER_TARGET_MODULES."""

from __future__ import annotations

import time

from jobs.registry import register


@register("test.late_output", "Print, sleep `seconds`, print again")
def late_output(seconds: float = 3.0):
    print("before the timeout")
    time.sleep(float(seconds))
    print("after the timeout")
