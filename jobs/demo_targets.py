"""Demo job targets, for `make run`'s demo jobs and the tests.

Registered only with SCHEDULER_DEMO_TARGETS=1 (jobs/apps.py): several write files at a
path their arguments name, which no production node should offer. What an operator may
override at run time is the harmless part: durations, messages, counts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from jobs import context
from jobs.context import current, current_execution
from jobs.registry import register


@register("demo.noop", "Do nothing (for benchmarks)", overridable=("args", "kwargs"))
def noop(*args, **kwargs):
    return None


@register("demo.sleep", "Sleep for `seconds`", overridable=("seconds",))
def sleep(seconds: float = 1.0):
    time.sleep(float(seconds))


@register("demo.fail", "Raise an error with `message`", overridable=("message",))
def fail(message: str = "demo failure"):
    raise RuntimeError(message)


@register("demo.echo", "Print the arguments it was given", overridable=("args", "kwargs"))
def echo(*args, **kwargs):
    print("demo.echo", args, kwargs, flush=True)


@register(
    "demo.append_line",
    "Append `line` to the file `path`, then sleep `seconds`",
    overridable=("seconds",),
)
def append_line(path: str, line: str = "ran", seconds: float = 0.0):
    # O_APPEND writes of one short line are atomic, so concurrent runs never interleave.
    with Path(path).open("a") as f:
        f.write(f"{line}\n")
    if seconds:
        time.sleep(float(seconds))


@register(
    "demo.fail_times", "Fail until `path` holds `times` lines, then succeed", overridable=("times",)
)
def fail_times(path: str, times: int = 1):
    p = Path(path)
    with p.open("a") as f:
        f.write("attempt\n")
    attempts = len(p.read_text().splitlines())
    if attempts <= int(times):
        raise RuntimeError(f"attempt {attempts} fails on purpose")


@register(
    "demo.record_run",
    "Append this run's execution id to the file `path`",
    overridable=("seconds",),
)
def record_run(path: str, seconds: float = 0.0):
    execution = current_execution()
    with Path(path).open("a") as f:
        f.write(f"{execution.execution_id}\n")
    if seconds:
        time.sleep(float(seconds))


@register(
    "demo.hold",
    "Append 'start <id>' to `path`, sleep `seconds`, append 'end <id>'",
    overridable=("seconds",),
)
def hold(path: str, seconds: float = 1.0):
    execution = current_execution()
    with Path(path).open("a") as f:
        f.write(f"start {execution.execution_id}\n")
    time.sleep(float(seconds))
    with Path(path).open("a") as f:
        f.write(f"end {execution.execution_id}\n")


@register(
    "demo.hang_once",
    "Hang for `seconds` the first time (creating `path`), then return",
    overridable=("seconds",),
)
def hang_once(path: str, seconds: float = 60.0):
    # For recovery demos and tests: the run that is killed hangs; its recovery finishes.
    marker = Path(path)
    if marker.exists():
        return
    marker.write_text("hung\n")
    time.sleep(float(seconds))


@register(
    "demo.trace",
    "Append a JSON line to `path` when the run starts and when it ends",
    overridable=("seconds",),
)
def trace(path: str, seconds: float = 0.0):
    # For fault tests: what ran, where, when (wall clock) and with which fencing token,
    # counted from the job's own side effects rather than from the database.
    execution = current()

    def write(event: str) -> None:
        line = json.dumps(
            {
                "event": event,
                "execution": execution.execution_id,
                "pid": os.getpid(),
                "fence": execution.fencing_token,
                "time": time.time(),
            }
        )
        with Path(path).open("a") as f:
            f.write(line + "\n")

    write("start")
    if seconds:
        time.sleep(float(seconds))
    write("end")


@register(
    "demo.chatty",
    "Log and print `lines` lines each over `seconds`",
    overridable=("lines", "seconds"),
)
def chatty(lines: int = 10, seconds: float = 0.0):
    # For the captured output: logging and print from the job's own thread.
    log = logging.getLogger("demo.chatty")
    execution_id = current().execution_id
    for i in range(int(lines)):
        log.info("log line %s of execution %s", i, execution_id)
        print(f"print line {i} of execution {execution_id}")
        if seconds:
            time.sleep(float(seconds) / int(lines))


@register(
    "demo.progress",
    "Report progress over `steps` steps lasting `seconds` in all; stop cleanly on cancel",
    overridable=("steps", "seconds", "message"),
)
def progress(steps: int = 10, seconds: float = 1.0, message: str = "step"):
    steps = int(steps)
    for step in range(steps):
        context.check_cancelled()
        if context.lock_lost():
            print(f"lock lost after {step} of {steps} steps: stopping")
            return {"stopped": "lock lost", "done": step}
        context.progress(step, steps, f"{message} {step + 1} of {steps}")
        print(f"{message} {step + 1} of {steps}")
        time.sleep(float(seconds) / steps)
    context.progress(steps, steps, "done")
    return {"done": steps}


@register("demo.stubborn", "Sleep `seconds`, ignoring any cancel request", overridable=("seconds",))
def stubborn(seconds: float = 60.0):
    print("not stopping for anyone")
    time.sleep(float(seconds))


@register("demo.returns", 'Return {"value": value}', overridable=("value",))
def returns(value: str = "done"):
    return {"value": value}


@register("demo.returns_set", "Return a set, which is not JSON")
def returns_set():
    return {1, 2, 3}
