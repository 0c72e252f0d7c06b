"""Cluster locks: leases in database time with fencing tokens, against real contenders.

Other holders are real processes (tests/locks/lock_worker.py) or threads with their own
connections; every "when" is read from PostgreSQL's clock, never from this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection

from locks.leases import LockLost, acquire, cluster_lock, locked
from locks.maintenance import force_release
from locks.models import Lock
from tests.conftest import ROOT, test_database_url, wait_for
from tests.jobs.test_cluster import libfaketime

pytestmark = pytest.mark.django_db(transaction=True)


def db_clock():
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def lock_state(name: str) -> dict:
    return Lock.objects.values("holder", "token", "locked_at", "locked_until",
                               "last_extended_at").get(name=name)  # fmt: skip


def has_backend(application_name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s)",
            [application_name],
        )
        return cursor.fetchone()[0]


def eventually_acquire(name: str, holder: str, at_most: float = 30):
    return wait_for(
        lambda: acquire(name, holder, at_most=at_most),
        timeout=20,
        interval=0.05,
        message=f"{holder} to acquire {name}",
    )


class LockWorkers:
    """`python -m tests.locks.lock_worker` processes; their events land in one file."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.events_path = tmp_path / "events.jsonl"
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, mode: str, name: str, holder: str, extra_env=None, **options):
        args = [sys.executable, "-m", "tests.locks.lock_worker", mode, "--name", name,
                "--holder", holder, "--out", str(self.events_path)]  # fmt: skip
        for option, value in options.items():
            args += [f"--{option.replace('_', '-')}", str(value)]
        env = {**os.environ, "DATABASE_URL": test_database_url(),
               "APP_NAME": f"lock-worker:{holder}", **(extra_env or {})}  # fmt: skip
        with (self.tmp_path / f"{holder}.log").open("w") as log:
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[holder] = proc
        return proc

    def events(self, **match) -> list[dict]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines(keepends=True)
        events = [json.loads(line) for line in lines if line.endswith("\n")]
        return [e for e in events if all(e.get(k) == v for k, v in match.items())]

    def logs(self) -> str:
        return "\n".join(
            f"--- {holder}\n{(self.tmp_path / f'{holder}.log').read_text()}"
            for holder in self.procs
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(transactional_db, tmp_path):
    workers = LockWorkers(tmp_path)
    yield workers
    workers.stop()


class Gates:
    """Advisory locks held by the test on its own connection, one per (key, round).

    A worker blocks on the shared lock of a gate; opening the gate (releasing the
    exclusive lock) lets every blocked worker go at once. pg_locks shows how many wait.
    """

    def __init__(self, keys: list[int], rounds: int):
        self.conn = connection.get_new_connection(connection.get_connection_params())
        self.conn.autocommit = True
        for key in keys:
            for round_ in range(1, rounds + 1):
                self.conn.execute("SELECT pg_advisory_lock(%s, %s)", [key, round_])

    def waiting(self, key: int, round_: int) -> int:
        return self.conn.execute(
            """
            SELECT count(*) FROM pg_locks
            WHERE locktype = 'advisory' AND NOT granted AND objsubid = 2
              AND classid::bigint = %s AND objid::bigint = %s
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """,
            [key, round_],
        ).fetchone()[0]

    def open(self, key: int, round_: int) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", [key, round_])

    def close(self) -> None:
        self.conn.close()


def all_reported(events: list[dict], count: int) -> list[dict]:
    return events if len(events) == count else []


def test_exactly_one_of_many_processes_wins_each_round_of_a_race(workers):
    count, rounds, start, release = 6, 5, 7100, 7101
    gates = Gates([start, release], rounds)
    try:
        for i in range(count):
            workers.start("race", "raced", f"racer{i}", rounds=rounds, barrier=start)
        winners = []
        for round_ in range(1, rounds + 1):
            wait_for(
                lambda r=round_: gates.waiting(start, r) == count,
                timeout=60,
                message=f"all racers at the start of round {round_}\n{workers.logs()}",
            )
            gates.open(start, round_)
            results = wait_for(
                lambda r=round_: all_reported(workers.events(round=r, released=None), count),
                timeout=30,
                message=f"every racer to report round {round_}\n{workers.logs()}",
            )
            won = [e for e in results if e["won"]]
            assert len(won) == 1, results
            assert all(e["token"] is None for e in results if not e["won"])
            held = lock_state("raced")
            assert (held["holder"], held["token"]) == (won[0]["holder"], won[0]["token"])
            winners.append(won[0])
            # Only now, with every racer's attempt in, may the winner let go.
            gates.open(release, round_)
            wait_for(lambda r=round_: workers.events(round=r, released=True), timeout=30)
    finally:
        gates.close()

    assert [w["token"] for w in winners] == list(range(1, rounds + 1))
    for proc in workers.procs.values():
        assert proc.wait(timeout=30) == 0, workers.logs()
    assert lock_state("raced")["holder"] == ""


def test_released_lock_stays_held_until_at_least_has_passed():
    first = acquire("report", "a", at_most=30, at_least=2)
    first.release()

    row = lock_state("report")
    assert row["holder"] == ""
    assert row["locked_until"] == first.locked_at + timedelta(seconds=2)
    assert acquire("report", "b", at_most=30) is None
    second = eventually_acquire("report", "b")
    assert second.locked_at >= first.locked_at + timedelta(seconds=2)
    assert second.token == first.token + 1


def test_release_after_at_least_has_passed_frees_the_lock_at_once():
    first = acquire("report", "a", at_most=30, at_least=1)
    wait_for(lambda: db_clock() > first.locked_at + timedelta(seconds=1))
    first.release()

    second = acquire("report", "b", at_most=30)
    assert second is not None and second.token == first.token + 1


def test_expired_lock_can_be_taken_by_another_holder_with_a_higher_token():
    first = acquire("sweep", "a", at_most=1)
    assert acquire("sweep", "b", at_most=30) is None

    second = eventually_acquire("sweep", "b")
    assert second.locked_at >= first.locked_until
    assert second.token == first.token + 1
    row = lock_state("sweep")
    assert (row["holder"], row["token"]) == ("b", second.token)


def lost_to_force_release(name: str):
    force_release(name, "test", "stuck holder")
    return acquire(name, "new", at_most=30)


def lost_to_expiry(name: str):
    return eventually_acquire(name, "new")


@pytest.mark.parametrize(
    "at_most, lose",
    [(30, lost_to_force_release), (1, lost_to_expiry)],
    ids=["force-release", "expiry"],
)
def test_old_holder_cannot_extend_or_release_a_lock_taken_over_by_a_new_holder(at_most, lose):
    old = acquire("fenced", "old", at_most=at_most)
    new = lose("fenced")
    assert new is not None and new.token > old.token
    taken = lock_state("fenced")

    with pytest.raises(LockLost):
        old.extend(30)
    with pytest.raises(LockLost):
        old.release()

    assert lock_state("fenced") == taken
    assert (taken["holder"], taken["token"]) == ("new", new.token)
    new.release()  # the new holder's lease was not disturbed


def test_force_released_lease_cannot_be_extended_or_released_while_the_lock_is_free():
    old = acquire("fenced", "old", at_most=30)
    force_release("fenced", "test", "stuck holder")
    freed = lock_state("fenced")

    with pytest.raises(LockLost):
        old.extend(30)
    with pytest.raises(LockLost):
        old.release()

    assert lock_state("fenced") == freed
    assert freed["holder"] == "" and freed["token"] == old.token + 1


def test_releasing_an_expired_lease_nobody_took_raises_lock_lost_but_frees_the_lock():
    old = acquire("late", "old", at_most=1)
    wait_for(lambda: db_clock() > old.locked_until)
    with pytest.raises(LockLost):
        old.extend(30)

    with pytest.raises(LockLost, match="expired"):
        old.release()
    assert lock_state("late")["holder"] == ""
    assert acquire("late", "new", at_most=30).token == old.token + 1


def test_keepalive_holds_the_lock_while_the_body_runs_several_times_at_most():
    with cluster_lock("long", at_most=1, keepalive=True, holder="body") as lease:
        attempts = 0
        while db_clock() < lease.locked_at + timedelta(seconds=4):
            assert acquire("long", "intruder", at_most=1) is None
            attempts += 1
            time.sleep(0.1)
        row = lock_state("long")
        assert (row["holder"], row["token"]) == ("body", lease.token)
        assert row["last_extended_at"] > row["locked_at"] + timedelta(seconds=3)
    assert attempts > 10

    assert lock_state("long")["holder"] == ""
    after = acquire("long", "intruder", at_most=1)
    assert after is not None and after.token == lease.token + 1


def test_locked_function_is_skipped_while_the_lock_is_held_elsewhere():
    holders_seen = []

    @locked("nightly", at_most=30)
    def nightly():
        holders_seen.append(lock_state("nightly")["holder"])
        return "ran"

    other = acquire("nightly", "other", at_most=30)
    assert nightly() is None
    assert holders_seen == []
    other.release()

    assert nightly() == "ran"
    assert len(holders_seen) == 1 and holders_seen[0] not in ("", "other")
    assert lock_state("nightly")["holder"] == ""


def test_lock_of_a_holder_killed_with_sigkill_frees_itself_after_at_most(workers):
    proc = workers.start("hold", "kept", "doomed", at_most=2)
    wait_for(lambda: workers.events(holder="doomed"), timeout=60, message=workers.logs())
    taken = lock_state("kept")
    wait_for(
        lambda: lock_state("kept")["last_extended_at"] > taken["locked_at"] + timedelta(seconds=1),
        timeout=10,
        message="the holder's keepalive to extend its lease",
    )

    proc.kill()
    proc.wait()
    killed_at = db_clock()
    assert acquire("kept", "heir", at_most=30) is None
    # Once its backend is gone, no extension the dead process sent can still land.
    wait_for(lambda: not has_backend("lock-worker:doomed"), timeout=10)
    last = lock_state("kept")
    assert last["holder"] == "doomed" and last["locked_until"] > killed_at

    heir = eventually_acquire("kept", "heir")
    assert heir.locked_at >= last["locked_until"]
    assert heir.locked_at - killed_at < timedelta(seconds=2 + 1)
    assert heir.token == last["token"] + 1


def test_waiting_acquire_takes_the_lock_promptly_after_the_holder_releases():
    first = acquire("queue", "a", at_most=30)
    waited = {}

    def wait_for_the_lock():
        try:
            waited["started_at"] = db_clock()
            waited["lease"] = acquire("queue", "b", at_most=30, wait=20)
        finally:
            connection.close()

    waiter = threading.Thread(target=wait_for_the_lock)
    waiter.start()
    wait_for(lambda: "started_at" in waited)
    waiter.join(timeout=1.0)  # hold the lock for about a second while b waits
    assert waiter.is_alive(), "b returned while the lock was still held"

    released_at = db_clock()
    first.release()
    waiter.join(timeout=30)

    second = waited["lease"]
    assert second is not None and second.holder == "b"
    assert waited["started_at"] < released_at < second.locked_at
    assert second.locked_at - released_at < timedelta(seconds=2)


def test_waiting_acquire_takes_an_expired_lock_when_its_lease_runs_out():
    first = acquire("queue", "a", at_most=2)
    second = acquire("queue", "b", at_most=30, wait=20)
    assert second is not None
    assert first.locked_until <= second.locked_at < first.locked_until + timedelta(seconds=1)


def test_waiting_acquire_returns_none_when_the_lock_is_not_released_in_time():
    first = acquire("queue", "a", at_most=30)
    started = time.monotonic()
    assert acquire("queue", "b", at_most=30, wait=1.5) is None
    assert time.monotonic() - started >= 1.5
    row = lock_state("queue")
    assert (row["holder"], row["token"]) == ("a", first.token)


@pytest.mark.parametrize("skew", ["+1h", "-1h"])
def test_lock_taken_by_a_process_with_a_skewed_clock_lasts_at_most_in_database_time(workers, skew):
    # As in tests/jobs/test_cluster.py: only the wall clock is wrong on such a machine.
    skewed = {"LD_PRELOAD": libfaketime(), "FAKETIME": skew, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    proc = workers.start("acquire", "skewed", "skewed", at_most=3, extra_env=skewed)
    assert proc.wait(timeout=60) == 0, workers.logs()
    assert acquire("skewed", "plain", at_most=30) is None
    [event] = workers.events()

    now = db_clock()
    assert abs(abs(event["wall_clock"] - now.timestamp()) - 3600) < 60, "clock not skewed"
    row = lock_state("skewed")
    assert (row["holder"], row["token"]) == ("skewed", event["token"])
    assert row["locked_until"] - row["locked_at"] == timedelta(seconds=3)
    assert timedelta(0) < now - row["locked_at"] < timedelta(seconds=3)

    plain = eventually_acquire("skewed", "plain")
    assert row["locked_until"] <= plain.locked_at < row["locked_until"] + timedelta(seconds=1)


@pytest.mark.parametrize(
    "arguments",
    [
        {"name": "x", "at_most": 5, "at_least": 6},
        {"name": "x", "at_most": 0},
        {"name": "x", "at_most": -1},
        {"name": "x", "at_most": float("nan")},
        {"name": "x", "at_most": 5, "at_least": -1},
        {"name": "", "at_most": 5},
    ],
    ids=[
        "at_least-over-at_most",
        "zero-at_most",
        "negative-at_most",
        "nan-at_most",
        "negative-at_least",
        "empty-name",
    ],  # fmt: skip
)
def test_acquire_rejects_bad_arguments_and_writes_nothing(arguments):
    with pytest.raises(ValueError):
        acquire(holder="h", **arguments)
    with pytest.raises(ValueError):
        with cluster_lock(holder="h", **arguments):
            pass
    assert not Lock.objects.exists()


def test_extend_rejects_a_non_positive_at_most_and_leaves_the_lease_alone():
    lease = acquire("x", "h", at_most=30)
    before = lock_state("x")
    with pytest.raises(ValueError):
        lease.extend(0)
    assert lock_state("x") == before
