"""Coordination rows: scheduler nodes and their liveness."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


class SchedulerNode(models.Model):
    class State(models.TextChoices):
        ACTIVE = "active"
        STOPPED = "stopped"
        DEAD = "dead"

    id = models.CharField(primary_key=True, max_length=200, help_text="host:pid:random")
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    version = models.CharField(max_length=50, blank=True, default="")
    started_at = models.DateTimeField(db_default=Now())
    last_heartbeat = models.DateTimeField(db_default=Now())
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    stopped_at = models.DateTimeField(null=True, blank=True)
    declared_dead_by = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        indexes = [
            # recover_dead_nodes: active nodes by heartbeat age.
            models.Index(
                fields=["last_heartbeat"], name="node_active_idx", condition=Q(state="active")
            ),
        ]

    def __str__(self) -> str:
        return self.id


class Lock(models.Model):
    """A named cluster-wide lock: a lease in database time with a fencing token.

    Free when ``locked_until`` has passed (a released lock may stay held until
    ``locked_at + at_least``). ``holder`` is empty once released; a holder that is set on
    an expired row means the lease ran out without a release: a stale lock.
    """

    name = models.CharField(primary_key=True, max_length=255)
    holder = models.CharField(max_length=255, blank=True, default="")
    locked_at = models.DateTimeField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    #: Strictly increasing per name: bumped by every acquisition and every forced release.
    token = models.BigIntegerField(default=0)
    execution = models.ForeignKey(
        "jobs.Execution", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    last_extended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        permissions = [
            ("force_release_lock", "Can force-release a lock"),
            ("cleanup_stale_locks", "Can clean up stale locks"),
        ]
        indexes = [
            # stale_locks: held rows only.
            models.Index(fields=["locked_until"], name="lock_held_idx", condition=~Q(holder="")),
        ]

    def __str__(self) -> str:
        return self.name
