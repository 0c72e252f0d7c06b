"""The leader lease among real scheduler node processes.

The nodes run with tests/conftest.py's fast settings: a heartbeat every 0.5 s (each one
refreshes the leader lease) and a leader lease of 2 s.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F

from locks.leader import LEADER_LOCK
from locks.models import Lock, SchedulerNode
from tests.conftest import FAST_NODE_ENV, wait_for

pytestmark = pytest.mark.cluster

LEASE = float(FAST_NODE_ENV["SCHEDULER_LEADER_LEASE"])
HEARTBEAT = float(FAST_NODE_ENV["SCHEDULER_HEARTBEAT_INTERVAL"])


def db_clock():
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def leader_row() -> Lock | None:
    return Lock.objects.filter(name=LEADER_LOCK).first()


def has_backend(application_name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s)",
            [application_name],
        )
        return cursor.fetchone()[0]


def start_cluster(start_node, count: int = 3, **kwargs) -> dict:
    nodes = {node.node_id: node for node in (start_node(f"n{i}", **kwargs) for i in range(count))}
    # Every node has heartbeated, and so has tried for the lease, at least once.
    wait_for(
        lambda: (
            SchedulerNode.objects.filter(
                pk__in=nodes, state="active", last_heartbeat__gt=F("started_at")
            ).count()
            == count
        ),
        timeout=60,
        message="every node to register and heartbeat",
    )
    return nodes


def wait_for_leader(nodes: dict, other_than: str = "") -> Lock:
    return wait_for(
        lambda: (row := leader_row()) and row.holder in nodes and row.holder != other_than and row,
        timeout=30,
        message="a node to hold the leader lease",
    )


def test_exactly_one_node_leads_and_a_killed_leader_is_replaced_within_the_lease(start_node):
    nodes = start_cluster(start_node)
    first = wait_for_leader(nodes)

    # Past the end of its first lease the same node still leads: it extends the lease
    # rather than losing it, and no other node takes the lock meanwhile.
    while db_clock() < first.locked_until + timedelta(seconds=1):
        row = leader_row()
        assert (row.holder, row.token) == (first.holder, first.token)
        time.sleep(0.05)
    assert leader_row().locked_until > first.locked_until
    assert SchedulerNode.objects.get(pk=first.holder).state == "active"
    claimed = [node_id for node_id, node in nodes.items() if "is the leader" in node.log()]
    assert claimed == [first.holder]

    leader = nodes[first.holder]
    leader.kill9()
    killed_at = db_clock()
    # Once its backend is gone, no extension the dead leader sent can still land.
    wait_for(lambda: not has_backend(f"node:{leader.node_id}"), timeout=10)
    last = leader_row()
    assert last.holder == leader.node_id and last.locked_until > killed_at

    new = wait_for_leader(nodes, other_than=leader.node_id)
    assert new.token > last.token
    # Nobody took over while the dead leader's lease ran; then within a heartbeat or so.
    assert new.locked_at >= last.locked_until
    assert new.locked_at - killed_at < timedelta(seconds=LEASE + 3 * HEARTBEAT)
    # The new leader runs the maintenance: it declares the killed node dead.
    dead = wait_for(
        lambda: SchedulerNode.objects.filter(pk=leader.node_id, state="dead").first(),
        timeout=30,
        message="the new leader to declare the killed node dead",
    )
    assert dead.declared_dead_by == new.holder


def test_a_leader_stopped_gracefully_resigns_and_another_node_takes_over_at_once(start_node):
    # A long lease: a takeover before it runs out can only come from the resignation.
    nodes = start_cluster(start_node, extra_env={"SCHEDULER_LEADER_LEASE": "30"})
    first = wait_for_leader(nodes)
    leader = nodes[first.holder]
    held = leader_row()

    stopped_at = db_clock()
    assert leader.terminate() == 0, leader.log()
    new = wait_for_leader(nodes, other_than=leader.node_id)

    assert new.token == held.token + 1
    assert new.locked_at < held.locked_until
    assert new.locked_at - stopped_at < timedelta(seconds=5)
    assert SchedulerNode.objects.get(pk=leader.node_id).state == "stopped"
