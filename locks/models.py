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
