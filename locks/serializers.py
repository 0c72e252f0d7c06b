"""What the REST API says about locks and scheduler nodes, and what it accepts.

Every field is read-only: locks and nodes change only through the domain functions in
locks/maintenance.py, which the viewsets in locks/api.py call.
"""

from __future__ import annotations

from datetime import datetime

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from locks.models import Lock, SchedulerNode

DEFAULT_CLEANUP_REASON = "stale lock cleanup through the API"


@extend_schema_field(OpenApiTypes.DOUBLE)
class SecondsField(serializers.ReadOnlyField):
    """A duration (a ``timedelta`` computed by PostgreSQL) as seconds, to the millisecond."""

    def to_representation(self, value):
        return round(value.total_seconds(), 3)


# The text a reason may be, for the schema (an ECMAScript regex, read by clients and
# schemathesis): no NUL, which PostgreSQL cannot store, and for a required reason
# something left after str.strip(), whose whitespace is spelled out so that the pattern
# means what the server checks. (The server checks with DRF's own validators.)
_SPACE = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x10000)) if c.isspace())
NOT_BLANK = rf"^[{_SPACE}]*[^\u0000{_SPACE}][^\u0000]*$"
STORABLE = r"^[^\u0000]+$"  # drf-spectacular adds "or blank" (oneOf) itself


class TextField(serializers.CharField):
    """A CharField that takes only text: DRF's would turn 0 or true into "0" or "True"."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            data.encode()
        except UnicodeEncodeError:  # a lone surrogate, sent as a "\ud800" JSON escape
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field({"type": "string", "pattern": NOT_BLANK})
class ReasonField(TextField):
    pass


@extend_schema_field({"type": "string", "pattern": STORABLE})
class OptionalReasonField(TextField):
    pass


class LockSerializer(serializers.ModelSerializer):
    holder_state = serializers.ChoiceField(
        choices=SchedulerNode.State.choices,
        allow_null=True,
        read_only=True,
        help_text="The state of the scheduler node holding the lock; null when the holder "
        "is not a scheduler node (or nobody holds it).",
    )
    expires_in_seconds = SecondsField(
        source="expires_in",
        allow_null=True,
        help_text="Seconds until the lease runs out, in database time; negative once it "
        "has run out; null for a lock that never had a lease.",
    )
    execution_id = serializers.IntegerField(
        allow_null=True,
        read_only=True,
        help_text="The execution the lock is held for, if any.",
    )
    held = serializers.BooleanField(
        read_only=True,
        help_text="Not yet released by its holder, or released but kept until its "
        "at_least time. A held lock whose holder can no longer release it is stale.",
    )
    stale = serializers.BooleanField(read_only=True)
    stale_reason = serializers.CharField(
        allow_null=True,
        read_only=True,
        help_text="Why the holder can no longer release the lock; null when not stale.",
    )

    class Meta:
        model = Lock
        fields = [
            "name", "holder", "holder_state", "locked_at", "locked_until",
            "expires_in_seconds", "token", "execution_id", "last_extended_at", "held",
            "stale", "stale_reason",
        ]  # fmt: skip
        read_only_fields = fields


class SchedulerNodeSerializer(serializers.ModelSerializer):
    heartbeat_age_seconds = SecondsField(
        source="age", help_text="Seconds since the last heartbeat, in database time."
    )
    running_executions = serializers.IntegerField(
        source="running_count",
        read_only=True,
        help_text="How many of its executions are dispatched or running.",
    )

    class Meta:
        model = SchedulerNode
        fields = [
            "id", "hostname", "pid", "version", "state", "started_at", "last_heartbeat",
            "heartbeat_age_seconds", "stopped_at", "declared_dead_by", "running_executions",
        ]  # fmt: skip
        read_only_fields = fields


# --- query parameters -----------------------------------------------------------------


class LockListQuerySerializer(serializers.Serializer):
    all = serializers.BooleanField(
        default=False, help_text="List every lock, free ones too (default: held and stale)."
    )


class NodeListQuerySerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=SchedulerNode.State.choices, required=False, help_text="Only nodes in this state."
    )


# --- actions --------------------------------------------------------------------------


class ForceReleaseSerializer(serializers.Serializer):
    # CharField strips whitespace, so a reason of only spaces is blank: refused.
    reason = ReasonField(
        help_text="Why the lock is forced free; recorded in the audit log with your name."
    )


class IsoDateTimeField(serializers.DateTimeField):
    """A time the domain already wrote as ISO 8601 text, shown like every other time."""

    def to_representation(self, value):
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return super().to_representation(value)


class LockBeforeSerializer(serializers.Serializer):
    holder = serializers.CharField()
    token = serializers.IntegerField()
    execution_id = serializers.IntegerField(allow_null=True)
    locked_at = IsoDateTimeField()
    locked_until = IsoDateTimeField()


class LockAfterSerializer(serializers.Serializer):
    holder = serializers.CharField(help_text="Always empty: nobody holds the lock.")
    token = serializers.IntegerField(help_text="The new token: the old holder is fenced off.")


class ForceReleaseResultSerializer(serializers.Serializer):
    name = serializers.CharField()
    before = LockBeforeSerializer()
    after = LockAfterSerializer()


class CleanupStaleSerializer(serializers.Serializer):
    reason = OptionalReasonField(
        required=False,
        allow_blank=True,
        help_text=f'Recorded in the audit log; "{DEFAULT_CLEANUP_REASON}" when left out.',
    )


class ReleasedLockSerializer(serializers.Serializer):
    """A stale lock as it was just before the cleanup released it."""

    name = serializers.CharField()
    holder = serializers.CharField()
    token = serializers.IntegerField(help_text="The token it had; the release bumped it.")
    locked_at = serializers.DateTimeField(allow_null=True)
    locked_until = serializers.DateTimeField(allow_null=True)
    execution_id = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField(help_text="Why it was stale.")


class CleanupResultSerializer(serializers.Serializer):
    released = ReleasedLockSerializer(many=True)


# --- errors ---------------------------------------------------------------------------


class LocksApiErrorSerializer(serializers.Serializer):
    """A 4xx body: ``detail`` for a request-wide error, else each bad field's messages."""

    detail = serializers.CharField(required=False)
    name = serializers.ListField(child=serializers.CharField(), required=False)
    id = serializers.ListField(child=serializers.CharField(), required=False)
    reason = serializers.ListField(child=serializers.CharField(), required=False)
    all = serializers.ListField(child=serializers.CharField(), required=False)
    state = serializers.ListField(child=serializers.CharField(), required=False)
    page_size = serializers.ListField(child=serializers.CharField(), required=False)
    non_field_errors = serializers.ListField(child=serializers.CharField(), required=False)
