"""Cluster-wide locks: leases in database time with fencing tokens.

    lease = acquire("reports:nightly", holder="worker-7", at_most=60)
    if lease:
        try:
            ...
        finally:
            lease.release()

    with cluster_lock("reports:nightly", at_most=60) as lease:  # keepalive by default
        ...

Callers need no Django: names, holders and seconds in, a ``Lease`` out. Every
comparison with "now" is PostgreSQL's clock, so a holder with a wrong clock is treated
like any other. Each acquisition bumps the lock's token; ``extend`` and ``release``
succeed only with the current token, so a holder whose lease expired or was force
released can never disturb the next holder (it gets ``LockLost``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from django.db import close_old_connections, connection, transaction

log = logging.getLogger("locks")

RELEASED_CHANNEL = "locks_released"

# One atomic statement: insert the row, or take it over only when its lease has run
# out. Concurrent acquirers serialise on the row's lock inside ON CONFLICT; the later
# one re-evaluates the WHERE against the committed row and gets no row back. Acquiring
# bumps the token, which fences off every earlier holder.
ACQUIRE = """
INSERT INTO locks_lock AS l
    (name, holder, locked_at, locked_until, token, execution_id, last_extended_at)
VALUES (%(name)s, %(holder)s, now(), now() + make_interval(secs => %(at_most)s), 1,
        %(execution)s, now())
ON CONFLICT (name) DO UPDATE SET
    holder = EXCLUDED.holder,
    locked_at = now(),
    locked_until = EXCLUDED.locked_until,
    token = l.token + 1,
    execution_id = EXCLUDED.execution_id,
    last_extended_at = now()
WHERE l.locked_until <= now()
RETURNING token, locked_at, locked_until
"""

# Extending needs the caller's token to be current and its lease not yet run out:
# once expired, someone else may already have acted on the lock being free.
EXTEND = """
UPDATE locks_lock
SET locked_until = now() + make_interval(secs => %(at_most)s), last_extended_at = now()
WHERE name = %(name)s AND token = %(token)s AND holder = %(holder)s AND locked_until > now()
RETURNING locked_until
"""

# Row-locked read for release: decides between "released", "released late" (the lease
# had run out, but nobody took the lock meanwhile) and "lost" (the token moved on).
SELECT_FOR_RELEASE = """
SELECT token, holder, locked_until > now(), locked_until
FROM locks_lock WHERE name = %(name)s FOR UPDATE
"""

# A release keeps the lock held until locked_at + at_least (a floor on how often a
# job guarded by it can run, as in ShedLock), and tells waiters it may be free.
RELEASE = """
UPDATE locks_lock
SET holder = '', execution_id = NULL,
    locked_until = LEAST(locked_until,
                         GREATEST(now(), locked_at + make_interval(secs => %(at_least)s)))
WHERE name = %(name)s AND token = %(token)s
"""

NOTIFY_RELEASED = "SELECT pg_notify('" + RELEASED_CHANNEL + "', %(name)s)"

SECONDS_UNTIL_FREE = """
SELECT extract(epoch FROM locked_until - clock_timestamp()) FROM locks_lock WHERE name = %s
"""


class LockError(Exception):
    """Base class of lock errors."""


# Lock names: segments of letters, digits and - _ . : @ + = joined by "/", at most
# LOCK_NAME_MAX characters, no segment empty, "." or "..". Browsers and HTTP clients
# remove dot segments from URL paths, so a name with one could address another lock.
LOCK_NAME_MAX = 200
_SEGMENT = re.compile(r"[A-Za-z0-9_.:@+=-]+")


class InvalidLockName(ValueError):
    """A lock name outside the documented character set or form."""


def validate_lock_name(name) -> None:
    """Raise InvalidLockName (a ValueError) saying what is wrong with ``name``."""
    if not isinstance(name, str) or not name:
        raise InvalidLockName("a lock needs a name")
    if len(name) > LOCK_NAME_MAX:
        raise InvalidLockName(f"a lock name has at most {LOCK_NAME_MAX} characters")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidLockName(
                f"lock name {name[:LOCK_NAME_MAX]!r}: no part between slashes may be empty, "
                '"." or ".."'
            )
        if not _SEGMENT.fullmatch(segment):
            raise InvalidLockName(
                f"lock name {name[:LOCK_NAME_MAX]!r}: use letters, digits and - _ . : @ + = "
                "(and / between parts)"
            )


class LockLost(LockError):
    """The caller's lease is no longer current: it expired, or was force released."""


class LockNotAcquired(LockError):
    """``cluster_lock`` could not take the lock (it is held by someone else)."""


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@dataclass
class Lease:
    """A held lock. ``token`` is the fencing token to pass to anything it protects."""

    name: str
    holder: str
    token: int
    locked_at: datetime
    locked_until: datetime
    at_least: float = 0.0

    def extend(self, at_most: float) -> datetime:
        """Hold the lock until ``at_most`` seconds from now (database time)."""
        _check_seconds("at_most", at_most, minimum_exclusive=0)
        with connection.cursor() as cursor:
            cursor.execute(
                EXTEND,
                {"name": self.name, "token": self.token, "holder": self.holder,
                 "at_most": at_most},
            )  # fmt: skip
            row = cursor.fetchone()
        if row is None:
            raise LockLost(self._lost_message("extend"))
        self.locked_until = row[0]
        return self.locked_until

    def release(self) -> None:
        """Let the lock go (it stays held until ``locked_at + at_least``).

        Raises LockLost if the lease was no longer this holder's: the lock was taken
        over or force released (nothing is changed), or it had expired (the lock is
        released all the same, since nobody else took it, but the protected work ran
        for a while without the lock). Releasing twice is harmless, so a release whose
        answer was lost with the connection can simply be retried.
        """
        with transaction.atomic(), connection.cursor() as cursor:
            params = {"name": self.name, "token": self.token, "at_least": self.at_least}
            cursor.execute(SELECT_FOR_RELEASE, params)
            row = cursor.fetchone()
            if row is not None and row[0] == self.token and row[1] == "":
                # Released already with this token: only a release leaves the token as it
                # was, so this is a repeat (a retry after the answer to the first was lost).
                return
            if row is None or row[0] != self.token or row[1] != self.holder:
                raise LockLost(self._lost_message("release"))
            _, _, still_valid, locked_until = row
            cursor.execute(RELEASE, params)
            cursor.execute(NOTIFY_RELEASED, params)
        if not still_valid:
            raise LockLost(
                f"lock {self.name!r} (token {self.token}) had expired at {locked_until} "
                "before it was released; it is released now"
            )

    def _lost_message(self, action: str) -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT holder, token FROM locks_lock WHERE name = %s", [self.name])
            row = cursor.fetchone()
        now_held = f"now token {row[1]}, holder {row[0] or '(none)'}" if row else "gone"
        return (
            f"cannot {action} lock {self.name!r}: token {self.token} of {self.holder!r} is "
            f"no longer current ({now_held}); the lease expired or was force released"
        )


def acquire(
    name: str,
    holder: str | None = None,
    at_most: float = 60.0,
    at_least: float = 0.0,
    wait: float | None = None,
    execution_id: int | None = None,
) -> Lease | None:
    """Take the lock ``name`` for at most ``at_most`` seconds, or return None.

    With ``wait``, block up to that many seconds for the lock to become free, woken by
    LISTEN/NOTIFY when it is released (or when its lease runs out).
    """
    validate_lock_name(name)
    if connection.in_atomic_block:
        # Inside a transaction the row would stay invisible to other holders (and to the
        # keepalive's own connection) until commit, and now() would be the transaction's
        # start: the lock would protect nothing.
        raise LockError("acquire() must not be called inside transaction.atomic()")
    _check_seconds("at_most", at_most, minimum_exclusive=0)
    _check_seconds("at_least", at_least)
    if wait is not None:
        _check_seconds("wait", wait)
    if at_least > at_most:
        raise ValueError("at_least must not be longer than at_most")
    holder = holder or default_holder()
    params = {"name": name, "holder": holder, "at_most": at_most, "execution": execution_id}
    lease = _try_acquire(params, at_least)
    if lease is not None or not wait:
        return lease
    return _wait_and_acquire(params, at_least, wait)


def _try_acquire(params: dict, at_least: float) -> Lease | None:
    with connection.cursor() as cursor:
        cursor.execute(ACQUIRE, params)
        row = cursor.fetchone()
    if row is None:
        return None
    token, locked_at, locked_until = row
    return Lease(params["name"], params["holder"], token, locked_at, locked_until, at_least)


def _wait_and_acquire(params: dict, at_least: float, wait: float) -> Lease | None:
    deadline = time.monotonic() + wait
    listener = connection.get_new_connection(connection.get_connection_params())
    try:
        listener.autocommit = True
        listener.execute(f"LISTEN {RELEASED_CHANNEL}")
        while True:
            # Listening before this attempt: a release between the two is not missed.
            lease = _try_acquire(params, at_least)
            if lease is not None:
                return lease
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with connection.cursor() as cursor:
                cursor.execute(SECONDS_UNTIL_FREE, [params["name"]])
                row = cursor.fetchone()
            until_free = float(row[0]) if row and row[0] is not None else 0.0
            timeout = min(remaining, max(until_free, 0.0) + 0.01)
            for notify in listener.notifies(timeout=timeout):
                if notify.payload == params["name"]:
                    break
    finally:
        listener.close()


class Keepalive(threading.Thread):
    """Extends a lease every ``at_most * fraction`` seconds until stopped or lost."""

    def __init__(
        self,
        lease: Lease,
        at_most: float,
        fraction: float = 1 / 3,
        on_lost: Callable[[LockLost], None] | None = None,
    ):
        super().__init__(name=f"keepalive:{lease.name}", daemon=True)
        self.lease = lease
        self.at_most = at_most
        self.every = max(at_most * fraction, 0.05)
        self.stopped = threading.Event()
        self.lost: LockLost | None = None
        #: Called once, from this thread, when an extension finds the lease lost.
        self.on_lost = on_lost

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.every):
                try:
                    self.lease.extend(self.at_most)
                except LockLost as e:
                    log.error("keepalive lost lock %s: %s", self.lease.name, e)
                    self.lost = e
                    if self.on_lost is not None:
                        self.on_lost(e)
                    return
                except Exception:  # a database hiccup: the next attempt may succeed
                    log.exception("keepalive could not extend lock %s", self.lease.name)
                    close_old_connections()
                    connection.close()
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join()


@contextmanager
def cluster_lock(
    name: str,
    at_most: float = 60.0,
    at_least: float = 0.0,
    keepalive: bool = True,
    wait: float | None = None,
    holder: str | None = None,
    execution_id: int | None = None,
) -> Iterator[Lease]:
    """Hold ``name`` while the body runs; raise LockNotAcquired if it is held elsewhere.

    With keepalive (the default) a background thread extends the lease every third of
    ``at_most`` while the body runs, so a body may run far longer than ``at_most``; if
    the process dies, extending stops and the lock frees itself after ``at_most``.
    """
    lease = acquire(name, holder, at_most, at_least, wait, execution_id)
    if lease is None:
        raise LockNotAcquired(f"lock {name!r} is held by someone else")
    keeper = Keepalive(lease, at_most) if keepalive else None
    if keeper:
        keeper.start()
    try:
        yield lease
    finally:
        if keeper:
            keeper.stop()
        lease.release()
        if keeper and keeper.lost:
            raise keeper.lost


def locked(
    name: str, at_most: float = 60.0, at_least: float = 0.0, keepalive: bool = True
) -> Callable:
    """Decorator: run the function only while holding ``name``; skip it if held elsewhere.

    A skipped call returns None and is logged, as with ShedLock's @SchedulerLock.
    """

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                with cluster_lock(name, at_most, at_least, keepalive):
                    return func(*args, **kwargs)
            except LockNotAcquired:
                log.info("skipped %s: lock %s is held elsewhere", func.__qualname__, name)
                return None

        return wrapper

    return decorate


def _check_seconds(label: str, value: float, minimum_exclusive: float | None = None) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{label} must be a finite number of seconds")
    if minimum_exclusive is not None and value <= minimum_exclusive:
        raise ValueError(f"{label} must be more than {minimum_exclusive} seconds")
    if value < 0:
        raise ValueError(f"{label} must not be negative")
