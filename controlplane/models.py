"""The operator audit log: every operator action and schedule edit."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone
from knox.models import AbstractAuthToken


class AuditEntry(models.Model):
    """Who did what, when, to which object, why, and what it changed."""

    created_at = models.DateTimeField(db_default=Now(), db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    #: The username, or the node or process that acted on its own (e.g. the leader).
    actor = models.CharField(max_length=255)
    action = models.CharField(max_length=100)
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=255)
    reason = models.TextField(blank=True, default="")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object_idx")]

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.object_type}:{self.object_id}"


class ApiToken(AbstractAuthToken):
    """A named REST API token of one user; only its hash is stored (django-rest-knox).

    The key is shown once, when it is made. ``token_key`` holds its first characters: how
    knox finds the row to compare hashes with, and how people tell their tokens apart.
    """

    # An id to address the row by (knox's primary key is the digest, not for URLs).
    id = models.BigAutoField(primary_key=True)
    digest = models.CharField(max_length=128, unique=True)
    name = models.CharField(max_length=100)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name = "API token"
        constraints = [
            models.UniqueConstraint(fields=["user", "name"], name="one_token_name_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.user}, {self.token_key[:8]}…)"

    @property
    def expired(self) -> bool:
        return self.expiry is not None and self.expiry <= timezone.now()
