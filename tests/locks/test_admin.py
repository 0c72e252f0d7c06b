"""The lock and node admin: what an operator sees, and force release with a reason."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User

from controlplane.models import AuditEntry
from jobs.models import database_now
from locks.leases import acquire
from locks.models import Lock, SchedulerNode

# The tests take locks, which must happen outside a transaction.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("ada", "ada@example.com", "pw"))
    return client


def test_lock_list_shows_holder_liveness_expiry_token_and_stale_reason(admin_client):
    SchedulerNode.objects.create(id="node-dead", hostname="h", pid=1, state="dead")
    acquire("reports", holder="node-dead", at_most=300)
    acquire("fresh", holder="someone", at_most=300)
    Lock.objects.create(name="old", holder="w", token=4, locked_at=database_now(),
                        locked_until=database_now() - timedelta(seconds=90))  # fmt: skip
    page = admin_client.get("/admin/locks/lock/").content.decode()
    assert "holder node node-dead is dead" in page
    assert "not a scheduler node" in page
    assert "expired 1m 30s ago" in page or "expired 1m 31s ago" in page
    assert "never released" in page


def test_force_release_action_requires_a_reason_then_releases_and_audits(admin_client):
    lease = acquire("stuck", holder="worker-9", at_most=300)
    data = {"action": "force_release_action", "_selected_action": ["stuck"]}

    first = admin_client.post("/admin/locks/lock/", data)
    assert first.status_code == 200 and b"reason" in first.content
    assert Lock.objects.get(name="stuck").holder == "worker-9"

    blank = admin_client.post("/admin/locks/lock/", {**data, "confirm": "1", "reason": "  "})
    assert b"required" in blank.content
    assert Lock.objects.get(name="stuck").token == lease.token
    assert not AuditEntry.objects.exists()

    done = admin_client.post(
        "/admin/locks/lock/", {**data, "confirm": "1", "reason": "worker-9 hung"}, follow=True
    )
    assert b"Released stuck" in done.content
    lock = Lock.objects.get(name="stuck")
    assert lock.holder == "" and lock.token == lease.token + 1
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.reason, entry.before["holder"]) == ("ada", "worker-9 hung",
                                                                  "worker-9")  # fmt: skip


def test_node_list_shows_heartbeat_age(admin_client):
    SchedulerNode.objects.create(id="n1", hostname="h", pid=1)
    page = admin_client.get("/admin/locks/schedulernode/").content.decode()
    assert "n1" in page and "heartbeat age" in page.lower()
