"""Stale locks, cleanup and force release, each audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User

from controlplane.models import AuditEntry
from jobs.models import Execution, database_now
from locks.leases import LockLost, acquire
from locks.maintenance import (
    LockNotHeld,
    UnknownLock,
    cleanup_stale_locks,
    force_release,
    release_locks_of,
    stale_locks,
)
from locks.models import Lock, SchedulerNode
from tests.jobs.factories import make_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator():
    return User.objects.create_user("olga", password="pw")


def held_lock(name, holder, expires_in: float, **fields) -> Lock:
    """A held lock row whose lease ends ``expires_in`` seconds from now (database time)."""
    now = database_now()
    return Lock.objects.create(
        name=name, holder=holder, token=7, locked_at=now - timedelta(minutes=1),
        locked_until=now + timedelta(seconds=expires_in), **fields,
    )  # fmt: skip


@pytest.fixture
def locks_of_every_kind():
    job = make_job("j")
    SchedulerNode.objects.create(id="alive", hostname="h", pid=1)
    SchedulerNode.objects.create(id="gone", hostname="h", pid=2, state="dead")
    SchedulerNode.objects.create(id="done", hostname="h", pid=3, state="stopped")
    finished = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="manual", state="succeeded"
    )
    running = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="manual", state="running", node="alive"
    )
    held_lock("expired", "some-worker", -30)
    held_lock("dead-node", "gone", 300)
    held_lock("stopped-node", "done", 300)
    held_lock("finished-execution", "alive", 300, execution=finished)
    held_lock("healthy", "alive", 300, execution=running)
    Lock.objects.create(name="free", holder="", token=3, locked_until=database_now())


def test_stale_locks_lists_each_kind_with_its_reason(locks_of_every_kind):
    reasons = {s.name: s.reason for s in stale_locks()}
    assert set(reasons) == {"expired", "dead-node", "stopped-node", "finished-execution"}
    assert reasons["expired"].startswith("expired") and "never released" in reasons["expired"]
    assert reasons["dead-node"] == "holder node gone is dead"
    assert reasons["stopped-node"] == "holder node done is stopped"
    assert "which is succeeded" in reasons["finished-execution"]


def test_cleanup_releases_stale_locks_bumps_tokens_and_records_who(locks_of_every_kind, operator):
    freed = cleanup_stale_locks(operator, "night shift tidy-up")
    assert {f.name for f in freed} == {"expired", "dead-node", "stopped-node",
                                       "finished-execution"}  # fmt: skip
    for name in ("expired", "dead-node", "stopped-node", "finished-execution"):
        lock = Lock.objects.get(name=name)
        assert lock.holder == "" and lock.token == 8 and lock.execution_id is None
    healthy = Lock.objects.get(name="healthy")
    assert healthy.holder == "alive" and healthy.token == 7
    entries = AuditEntry.objects.filter(action="lock.cleanup_stale")
    assert entries.count() == 4
    entry = entries.get(object_id="dead-node")
    assert entry.user == operator and entry.actor == "olga"
    assert entry.reason == "night shift tidy-up"
    assert entry.before["holder"] == "gone" and entry.before["token"] == 7
    assert entry.before["stale_reason"] == "holder node gone is dead"
    assert stale_locks() == []


def test_force_release_frees_the_lock_fences_the_holder_and_is_audited(db, operator):
    lease = acquire("report", holder="worker-1", at_most=300)
    result = force_release("report", operator, "worker-1 is wedged")
    lock = Lock.objects.get(name="report")
    assert lock.holder == "" and lock.token == lease.token + 1
    assert lock.locked_until <= database_now()
    assert result["before"]["holder"] == "worker-1"
    entry = AuditEntry.objects.get(action="lock.force_release")
    assert (entry.actor, entry.object_id, entry.reason) == ("olga", "report", "worker-1 is wedged")
    assert entry.before["token"] == lease.token and entry.after["token"] == lease.token + 1
    with pytest.raises(LockLost):
        lease.release()
    with pytest.raises(LockLost):
        lease.extend(10)
    again = acquire("report", holder="worker-2", at_most=10)
    assert again is not None and again.token == lease.token + 2


def test_force_release_of_a_lock_nobody_holds_is_a_clear_error(db, operator):
    lease = acquire("quiet", holder="w", at_most=60)
    lease.release()
    with pytest.raises(LockNotHeld, match="not held"):
        force_release("quiet", operator, "why not")
    with pytest.raises(UnknownLock, match="no lock named 'nope'"):
        force_release("nope", operator, "typo")
    with pytest.raises(ValueError, match="reason is required"):
        force_release("quiet", operator, "  ")
    assert not AuditEntry.objects.exists()
    assert Lock.objects.get(name="quiet").token == lease.token


def test_locks_of_a_dead_holder_are_released_and_audited(db):
    acquire("a", holder="node-x", at_most=300)
    acquire("b", holder="node-x", at_most=300)
    kept = acquire("c", holder="node-y", at_most=300)
    assert sorted(release_locks_of(["node-x"], "node:leader", "holder node declared dead")) == [
        "a", "b"
    ]  # fmt: skip
    assert Lock.objects.get(name="c").holder == "node-y"
    kept.release()
    assert (
        AuditEntry.objects.filter(action="lock.release_dead_holder", actor="node:leader").count()
        == 2
    )
