"""Reading a run's captured log: the page's tail, the lines after one already shown
(live following), pages by offset (the API), and the whole log as plain text.

The engine writes ``ExecutionLogLine`` rows with ``seq`` 0, 1, 2, ... per execution, in
small batches while the run goes on. Every read here is a range of the unique
``(execution, seq)`` index, so the cost is the lines read, however long the log.
Messages are redacted below the admin role (controlplane.redaction.text_for_user).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from controlplane.redaction import text_for_user
from jobs.models import Execution, ExecutionLogLine

#: The newest lines the execution page shows; the download has them all.
PAGE_LINES = 1000
#: Most lines one live poll of the page adds (a poll that finds more asks again at once).
POLL_LINES = 1000
#: Lines per page of GET /api/v1/executions/<id>/log/, by default and at most.
API_LIMIT = 1000
API_MAX_LIMIT = 5000
#: Lines per query while streaming the plain-text download.
TEXT_BATCH = 2000

# When a run's output passes SCHEDULER_LOG_LIMIT the engine (jobs/capture.py) writes one
# last line, "[log truncated: this run's output passed SCHEDULER_LOG_LIMIT ...]", at
# WARNING: it is shown as a marker, not as the job's own output.
TRUNCATION_PREFIX = "[log truncated:"


def is_truncation_marker(line: ExecutionLogLine) -> bool:
    return line.level == "WARNING" and line.message.startswith(TRUNCATION_PREFIX)


@dataclass
class Lines:
    lines: list[ExecutionLogLine]
    #: Whether lines after these were already written when they were read.
    more: bool

    @property
    def last_seq(self) -> int | None:
        return self.lines[-1].seq if self.lines else None


def _marked(lines: list[ExecutionLogLine], ends_log: bool) -> list[ExecutionLogLine]:
    """Sets ``truncation`` on each line. Only the log's last line can be the engine's
    marker (nothing is written after it): a job may well log the word itself."""
    for line in lines:
        line.truncation = False
    if lines and ends_log:
        lines[-1].truncation = is_truncation_marker(lines[-1])
    return lines


def tail(execution: Execution, limit: int | None = None) -> tuple[list[ExecutionLogLine], int]:
    """The newest ``limit`` (PAGE_LINES) lines, oldest first, and how many the log has."""
    limit = limit or PAGE_LINES
    newest = list(ExecutionLogLine.objects.filter(execution=execution).order_by("-seq")[:limit])
    total = newest[0].seq + 1 if newest else 0
    return _marked(newest[::-1], ends_log=True), total


def lines_from(execution: Execution, first_seq: int, limit: int) -> Lines:
    """Up to ``limit`` lines from ``first_seq`` on, in order, and whether more follow."""
    found = list(
        ExecutionLogLine.objects.filter(execution=execution, seq__gte=first_seq).order_by("seq")[
            : limit + 1
        ]
    )
    more = len(found) > limit
    return Lines(_marked(found[:limit], ends_log=not more), more)


def shown_to(lines: list[ExecutionLogLine], user) -> list[ExecutionLogLine]:
    """Sets ``shown`` on each line: its message as ``user`` may read it."""
    for line in lines:
        line.shown = text_for_user(line.message, user)
    return lines


def as_text(execution: Execution, user) -> Iterator[str]:
    """The whole log as plain text, one line per record (``<time> <LEVEL> <message>``),
    redacted for ``user``; read in batches so that a long log is never held in memory."""
    after = -1
    while True:
        batch = list(
            ExecutionLogLine.objects.filter(execution=execution, seq__gt=after)
            .order_by("seq")
            .values_list("seq", "at", "level", "message")[:TEXT_BATCH]
        )
        if not batch:
            return
        yield "".join(
            f"{at.isoformat()} {level:<8} {text_for_user(message, user)}\n"
            for _seq, at, level, message in batch
        )
        after = batch[-1][0]
