"""The leader lease: one node at a time runs the cluster's maintenance.

It is an ordinary lock row (``cluster:leader``) held by a node id. The leader extends it
on every heartbeat; if the leader dies, the lease runs out (database time) and the next
node to try takes it, so a new leader is in place within the lease time.
"""

from __future__ import annotations

import logging

from locks.leases import Lease, LockLost, acquire

log = logging.getLogger("locks.leader")

LEADER_LOCK = "cluster:leader"


class Leadership:
    """This node's claim on the leader lease."""

    def __init__(self, node_id: str, lease_seconds: float):
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        self.lease: Lease | None = None

    @property
    def is_leader(self) -> bool:
        return self.lease is not None

    def refresh(self) -> bool:
        """Stay leader (extend), or try to become it; returns whether this node leads."""
        if self.lease is not None:
            try:
                self.lease.extend(self.lease_seconds)
                return True
            except LockLost as e:
                log.warning("node %s lost the leader lease: %s", self.node_id, e)
                self.lease = None
        self.lease = acquire(LEADER_LOCK, holder=self.node_id, at_most=self.lease_seconds)
        if self.lease is not None:
            log.info("node %s is the leader (token %s)", self.node_id, self.lease.token)
        return self.lease is not None

    def resign(self) -> None:
        """Give the lease up at once, so another node takes over without waiting."""
        lease, self.lease = self.lease, None
        if lease is not None:
            try:
                lease.release()
            except LockLost:
                pass
