"""What the REST API reads and writes for jobs, triggers and executions.

Writes are validated like the admin's edits: the model's ``full_clean()`` runs on the
object as it would be saved, and each Django error becomes a DRF error on its field.
"""

from __future__ import annotations

import copy
import functools
import zoneinfo

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.settings import api_settings

from controlplane import redaction
from controlplane.roles import sees_tracebacks
from jobs import catalogue, queries, registry, runlog, search, timeline
from jobs.describe import describe_schedule
from jobs.models import (
    Execution,
    Job,
    Trigger,
    validate_args,
    validate_kwargs,
    validate_timezone,
)

REASON_MAX = 500


@functools.cache
def time_zone_names() -> list[str]:
    """The zones a trigger accepts: the IANA names the model's validator allows."""
    names = []
    for name in sorted(zoneinfo.available_timezones()):
        try:
            validate_timezone(name)
        except DjangoValidationError:
            continue
        names.append(name)
    return names


class StrictCharField(serializers.CharField):
    """A JSON string and nothing else (DRF's CharField turns 0 into "0")."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false and nothing else (DRF's BooleanField also takes "yes", 1, "on")."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class _StrictModelSerializer(serializers.ModelSerializer):
    """A JSON body's types are what the schema says: no coercion of 0 to "0" or "1" to true."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
        models.BooleanField: StrictBooleanField,
    }


def _reason_field() -> serializers.CharField:
    return StrictCharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=REASON_MAX,
        help_text="Optional; recorded in the audit log with your name.",
    )


def full_clean(instance, exclude=None) -> None:
    """The model's own validation, as DRF errors keyed by field."""
    try:
        instance.full_clean(exclude=exclude)
    except DjangoValidationError as e:
        raise serializers.ValidationError(
            {
                api_settings.NON_FIELD_ERRORS_KEY if field == NON_FIELD_ERRORS else field: messages
                for field, messages in e.message_dict.items()
            }
        ) from None


def _model_validator(validate):
    """A model field validator (jobs.models.validate_args, ...) as a DRF validator."""

    def check(value) -> None:
        try:
            validate(value)
        except DjangoValidationError as e:
            raise serializers.ValidationError(e.messages) from None

    return check


_BOUNDS = (
    "No string in it may contain U+0000; at most 64 KB as JSON and 20 levels deep (the "
    'settings SCHEDULER_ARGS_MAX_BYTES, SCHEDULER_ARGS_MAX_DEPTH). {"$secret": "NAME"} '
    "stands for a secret the running node reads from its environment. Values under keys "
    "that look secret (password, token, ...) read as •••• below the admin role."
)


def args_field(**kwargs) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.JSONField(allow_null=True),
        validators=[_model_validator(validate_args)],
        help_text='Positional arguments, a JSON list, e.g. [1, "two"]. ' + _BOUNDS,
        **kwargs,
    )


def kwargs_field(**kwargs) -> serializers.DictField:
    return serializers.DictField(
        child=serializers.JSONField(allow_null=True),
        validators=[_model_validator(validate_kwargs)],
        help_text='Keyword arguments, a JSON object, e.g. {"seconds": 5}. ' + _BOUNDS,
        **kwargs,
    )


class RedactedArgumentsMixin:
    """args and kwargs as the requesting user may see them (controlplane.redaction)."""

    def to_representation(self, instance):
        data = super().to_representation(instance)
        request = self.context.get("request")
        user = getattr(request, "user", None)
        for name in ("args", "kwargs"):
            if name in data:
                data[name] = redaction.for_user(data[name], user)
        return data


class _ModelCleanMixin:
    """Run ``full_clean()`` on a copy of the instance with the validated values applied."""

    not_model_fields = ("reason",)  # validated fields that are not the model's
    clean_exclude: list[str] = []  # model fields full_clean() must not check

    def validate(self, attrs):
        attrs = super().validate(attrs)
        instance = copy.copy(self.instance) if self.instance is not None else self.Meta.model()
        for name, value in attrs.items():
            if name not in self.not_model_fields:
                setattr(instance, name, value)
        full_clean(instance, exclude=self.clean_exclude)
        return attrs


# --- jobs and triggers -------------------------------------------------------------------


class TriggerSummarySerializer(serializers.ModelSerializer):
    """One of a job's triggers, in brief."""

    summary = serializers.SerializerMethodField()

    class Meta:
        model = Trigger
        fields = ["id", "kind", "summary", "paused", "next_fire_at"]
        read_only_fields = fields

    def get_summary(self, trigger: Trigger) -> str:
        return describe_schedule(trigger)


class JobSerializer(RedactedArgumentsMixin, _ModelCleanMixin, _StrictModelSerializer):
    """A job: what runs (a registered target with its arguments) and how."""

    # A choice among registered targets: a dotted path sent by a client is never imported.
    target = serializers.ChoiceField(
        choices=[],
        required=False,
        allow_blank=True,
        help_text="A registered job target (see the enum); blank for a Celery task job.",
    )
    args = args_field(required=False)
    kwargs = kwargs_field(required=False)
    triggers = TriggerSummarySerializer(many=True, read_only=True)
    reason = _reason_field()

    class Meta:
        model = Job
        fields = [
            "id", "name", "description", "target", "celery_task", "args", "kwargs", "executor",
            "queue", "timeout", "max_attempts", "retry_backoff", "recover",
            "concurrency_policy", "paused", "managed_by", "created_at", "updated_at", "triggers",
            "reason",
        ]  # fmt: skip
        read_only_fields = ["paused", "managed_by", "created_at", "updated_at"]
        # The bounds Job.clean() checks, declared so that the schema states them too.
        extra_kwargs = {
            "timeout": {"min_value": 1},
            "max_attempts": {"min_value": 1},
            "retry_backoff": {"min_value": 0},
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Read per serializer, not at import: targets register when apps load.
        self.fields["target"].choices = registry.target_choices()

    def validate(self, attrs):
        # A full write (create or PUT) names what runs: a target, or a Celery task.
        if not self.partial and "target" not in attrs and not attrs.get("celery_task"):
            raise serializers.ValidationError({"target": ["This field is required."]})
        if self.instance is not None and "triggers" in self.initial_data:
            # Read-only fields are otherwise dropped without a word.
            raise serializers.ValidationError(
                {"triggers": [TRIGGERS_ARE_EDITED_APART.format(job=self.instance.pk)]}
            )
        return super().validate(attrs)


TRIGGERS_ARE_EDITED_APART = (
    "A job's triggers are changed under /api/v1/triggers/ (?job={job} lists them), not by "
    "a PUT or PATCH of the job; leave this field out."
)


class NewTriggerSerializer(_ModelCleanMixin, _StrictModelSerializer):
    """A trigger created with its job (POST /jobs/ with `triggers`)."""

    timezone = serializers.ChoiceField(
        choices=time_zone_names(),
        required=False,
        help_text="An IANA time zone name; default UTC.",
        error_messages={
            "invalid_choice": "Unknown time zone {input!r}: use an IANA name such as "
            "'Europe/London' or 'UTC'."
        },
    )
    clean_exclude = ["job"]  # the job does not exist yet

    class Meta:
        model = Trigger
        fields = [
            "kind", "cron", "timezone", "interval", "run_at", "start_at", "end_at",
            "misfire_policy", "misfire_grace",
        ]  # fmt: skip
        extra_kwargs = {"interval": {"min_value": 1}}


class JobCreateSerializer(JobSerializer):
    """A new job, and optionally its triggers, created together in one transaction."""

    triggers = NewTriggerSerializer(
        many=True,
        required=False,
        help_text="Triggers to create with the job, each audited; none when left out. "
        "Later changes go through /api/v1/triggers/.",
    )
    not_model_fields = ("reason", "triggers")

    def create(self, validated_data):
        triggers = validated_data.pop("triggers", [])
        job = super().create(validated_data)
        for fields in triggers:
            Trigger(job=job, **fields).save()  # save() computes next_fire_at
        return job

    def to_representation(self, instance):
        # Answered like every other job body: its triggers in brief, with their ids.
        return JobSerializer(instance, context=self.context).data


class JobPauseResultSerializer(JobSerializer):
    """The job after a pause or resume, and whether that changed it."""

    changed = serializers.BooleanField(
        read_only=True, help_text="False when the job already was in the requested state."
    )

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "changed"]


class TriggerSerializer(_ModelCleanMixin, _StrictModelSerializer):
    """A trigger: when its job fires (cron, fixed interval or once), in which time zone."""

    # A choice, so that the schema lists the zones; the model's validator still runs.
    timezone = serializers.ChoiceField(
        choices=time_zone_names(),
        required=False,
        help_text="An IANA time zone name; default UTC.",
        error_messages={
            "invalid_choice": "Unknown time zone {input!r}: use an IANA name such as "
            "'Europe/London' or 'UTC'."
        },
    )
    summary = serializers.SerializerMethodField()
    managed_by = serializers.CharField(
        source="job.managed_by",
        read_only=True,
        help_text="The schedule file its job is defined in, or empty: applying that file "
        "again overwrites changes made here.",
    )
    reason = _reason_field()

    class Meta:
        model = Trigger
        fields = [
            "id", "job", "kind", "cron", "timezone", "interval", "run_at", "start_at", "end_at",
            "misfire_policy", "misfire_grace", "paused", "next_fire_at", "last_fire_at",
            "summary", "managed_by", "created_at", "updated_at", "reason",
        ]  # fmt: skip
        read_only_fields = ["paused", "next_fire_at", "last_fire_at", "created_at", "updated_at"]
        extra_kwargs = {"interval": {"min_value": 1}}

    def get_summary(self, trigger: Trigger) -> str:
        return describe_schedule(trigger)


class TriggerPauseResultSerializer(TriggerSerializer):
    """The trigger after a pause or resume, and whether that changed it."""

    changed = serializers.BooleanField(
        read_only=True, help_text="False when the trigger already was in the requested state."
    )

    class Meta(TriggerSerializer.Meta):
        fields = [*TriggerSerializer.Meta.fields, "changed"]


class JobFilterSerializer(serializers.Serializer):
    q = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="Only jobs whose name contains this text (case-insensitive); empty: all.",
    )


class TriggerFilterSerializer(serializers.Serializer):
    job = serializers.IntegerField(required=False, min_value=1, help_text="Only this job's.")


class NextFireTimesQuerySerializer(serializers.Serializer):
    count = serializers.IntegerField(required=False, default=5, min_value=1, max_value=100)


class FireTimeSerializer(serializers.Serializer):
    utc = serializers.DateTimeField(help_text="The fire time in UTC.")
    # Given as an ISO 8601 string with the zone's offset, which DRF passes through as is.
    local = serializers.DateTimeField(help_text="The same instant in the trigger's time zone.")
    zone_abbreviation = serializers.CharField(help_text="e.g. CET or CEST.")


class NextFireTimesSerializer(serializers.Serializer):
    trigger = serializers.IntegerField()
    timezone = serializers.CharField()
    after = serializers.DateTimeField(help_text="Database time the fire times follow.")
    paused = serializers.BooleanField(
        help_text="The trigger or its job is paused: these fire only once it is resumed."
    )
    fire_times = FireTimeSerializer(many=True)


# --- actions ---------------------------------------------------------------------------


class ReasonSerializer(serializers.Serializer):
    reason = StrictCharField(
        required=False, allow_blank=True, default="", max_length=REASON_MAX,
        help_text="Optional; recorded in the audit log with your name.",
    )  # fmt: skip


class RunNowSerializer(ReasonSerializer):
    args = args_field(required=False, allow_null=True, default=None)
    kwargs = kwargs_field(required=False, allow_null=True, default=None)


# --- executions ------------------------------------------------------------------------


class ExecutionSerializer(serializers.ModelSerializer):
    """An execution as the history list shows it (no arguments, errors or notes)."""

    job_name = serializers.CharField(source="job.name", read_only=True)
    requested_by = serializers.CharField(
        source="requested_by.username", read_only=True, allow_null=True,
        help_text="The user who ran or reran it; null for scheduled fires.",
    )  # fmt: skip
    duration = serializers.FloatField(
        read_only=True, allow_null=True, help_text="Seconds from start to finish."
    )
    lag = serializers.FloatField(
        read_only=True,
        allow_null=True,
        help_text="Seconds from scheduled_for to dispatch, for scheduled fires.",
    )

    class Meta:
        model = Execution
        fields = [
            "id", "job", "job_name", "trigger", "state", "origin", "attempt", "node",
            "scheduled_for", "created_at", "run_after", "dispatched_at", "started_at",
            "finished_at", "requested_by", "retry_of", "rerun_of", "duration", "lag",
        ]  # fmt: skip
        read_only_fields = fields


_FREE_TEXT = "Below the admin role, values after secret-looking keys read as ••••."


class TimelineEntrySerializer(serializers.Serializer):
    """One step of a run's story (jobs/timeline.py)."""

    at = serializers.DateTimeField()
    kind = serializers.ChoiceField(choices=timeline.KINDS)
    actor = serializers.CharField(
        allow_blank=True, help_text='Who or what: a user name, "trigger #3", a node or worker.'
    )
    message = serializers.CharField(allow_blank=True)
    execution = serializers.IntegerField(
        source="execution_id",
        allow_null=True,
        help_text="The execution this step links to (a retry, a rerun, a recovery), or null.",
    )
    state = serializers.CharField(
        allow_blank=True,
        help_text="That execution's state; for `finished`, this one's final state.",
    )


class ExecutionDetailSerializer(RedactedArgumentsMixin, ExecutionSerializer):
    """An execution with its arguments, error, traceback, notes, result, progress, cancel
    request, lost lock and timeline."""

    args = args_field(read_only=True)
    kwargs = kwargs_field(read_only=True)
    error = serializers.CharField(
        read_only=True,
        help_text="Below the admin role, values after secret-looking keys (password=...) "
        "read as ••••.",
    )
    traceback = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="null for the viewer role, which sees the error line only.",
    )
    note = serializers.CharField(
        read_only=True,
        help_text="Misfire and recovery notes, and why a result was not kept. " + _FREE_TEXT,
    )
    result = serializers.JSONField(
        read_only=True,
        allow_null=True,
        help_text="What the target returned (JSON, at most SCHEDULER_RESULT_LIMIT; a result "
        "that could not be kept is explained in `note`), redacted below the admin role.",
    )
    progress_total = serializers.FloatField(
        read_only=True, allow_null=True, help_text="null: the run did not say (or knows no total)."
    )
    progress_message = serializers.CharField(read_only=True, help_text=_FREE_TEXT)
    cancel_requested_by = serializers.CharField(read_only=True)
    cancel_reason = serializers.CharField(read_only=True)
    fence = serializers.IntegerField(
        read_only=True,
        allow_null=True,
        help_text="Fencing token of the latest start of this run (larger for every later "
        "start of any run).",
    )
    timeline = serializers.SerializerMethodField(
        help_text="The run's story in order: created, claimed, started, its events "
        "(progress milestones, lock lost, cancel requested, notes), finished, and the retry "
        "or reruns that followed it."
    )

    class Meta(ExecutionSerializer.Meta):
        fields = [
            *ExecutionSerializer.Meta.fields, "args", "kwargs", "reason", "error", "traceback",
            "note", "result", "progress_done", "progress_total", "progress_message",
            "progress_at", "cancel_requested_at", "cancel_requested_by", "cancel_reason",
            "lock_lost_at", "fence", "timeline",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(TimelineEntrySerializer(many=True))
    def get_timeline(self, execution: Execution) -> list:
        story = timeline.timeline(execution, self._user())
        return TimelineEntrySerializer(story.entries, many=True).data

    def _user(self):
        return getattr(self.context.get("request"), "user", None)

    def to_representation(self, instance):
        data = super().to_representation(instance)
        user = self._user()
        if not sees_tracebacks(user):
            data["traceback"] = None
        data["result"] = redaction.for_user(data["result"], user)
        for name in ("error", "note", "progress_message"):
            data[name] = redaction.text_for_user(data[name], user)
        return data


class LogQuerySerializer(serializers.Serializer):
    offset = serializers.IntegerField(
        required=False,
        default=0,
        min_value=0,
        max_value=2**31 - 1,
        help_text="The `seq` of the first line wanted: 0, or the `next_offset` of the "
        "previous answer.",
    )
    limit = serializers.IntegerField(
        required=False,
        default=runlog.API_LIMIT,
        min_value=1,
        max_value=runlog.API_MAX_LIMIT,
        help_text=f"Lines per answer ({runlog.API_LIMIT} by default, at most "
        f"{runlog.API_MAX_LIMIT}).",
    )


class LogLineSerializer(serializers.Serializer):
    seq = serializers.IntegerField(help_text="0, 1, 2, ... in the order the run wrote them.")
    at = serializers.DateTimeField(help_text="When the line was produced (database time).")
    level = serializers.CharField(help_text="A logging level name, or STDOUT/STDERR for print.")
    message = serializers.CharField(source="shown", allow_blank=True, help_text=_FREE_TEXT)
    truncation = serializers.BooleanField(
        help_text="This is the line the scheduler wrote when the run's output passed "
        "SCHEDULER_LOG_LIMIT: later output was not kept."
    )


class ExecutionLogSerializer(serializers.Serializer):
    execution = serializers.IntegerField()
    lines = LogLineSerializer(many=True)
    next_offset = serializers.IntegerField(
        help_text="The offset to ask for next: the seq after the last line here (the same "
        "offset when there was none)."
    )
    more = serializers.BooleanField(
        help_text="Lines after these were already written: ask again at once."
    )
    finished = serializers.BooleanField(
        help_text="The execution had finished before these lines were read: once `more` is "
        "false as well, the log is complete (but for a timed-out or cancelled run whose "
        "inline thread went on: what it prints until it returns is still added)."
    )


class CancelSerializer(serializers.Serializer):
    reason = StrictCharField(
        max_length=REASON_MAX,
        help_text="Required; recorded in the audit log with your name and shown on the execution.",
    )


class ExecutionFilterSerializer(serializers.Serializer):
    """The executions page's filters, by the same names (jobs.queries.filter_executions)."""

    job = serializers.IntegerField(required=False, min_value=1)
    state = serializers.ChoiceField(choices=Execution.State.choices, required=False)
    origin = serializers.ChoiceField(choices=Execution.Origin.choices, required=False)
    node = StrictCharField(required=False, max_length=200)
    created_from = serializers.DateTimeField(
        required=False, help_text="Created at or after (naive times are UTC)."
    )
    created_to = serializers.DateTimeField(
        required=False,
        help_text="Created before (naive times are UTC); must be after created_from.",
    )

    since = StrictCharField(
        required=False,
        help_text='Created within this window back from the database\'s now: "15m", "24h", '
        '"7d" (at most 366 days). The overview\'s counts link with it.',
    )
    q = StrictCharField(
        required=False,
        min_length=search.Q_MIN,
        max_length=search.Q_MAX,
        help_text="Text in the error or the arguments (any case). Below the admin role, "
        "values that are redacted for you (••••) are not searched.",
    )

    def validate_since(self, value):
        try:
            return queries.parse_window(value)
        except ValueError as e:
            raise serializers.ValidationError(str(e)) from None

    def validate(self, attrs):
        start, end = attrs.get("created_from"), attrs.get("created_to")
        if start and end and end <= start:
            raise serializers.ValidationError(
                {"created_to": ["Must be after the start of the range."]}
            )
        return attrs


class BulkActionSerializer(serializers.Serializer):
    """A bulk rerun or cancel: the executions by ``ids``, or by ``filter`` (the list's)."""

    action = serializers.ChoiceField(choices=[("rerun", "rerun"), ("cancel", "cancel")])
    ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        required=False,
        allow_empty=False,
        help_text="The executions to act on. Give either this or `filter`.",
    )
    filter = serializers.DictField(
        required=False,
        help_text="The executions list's filters, by its query parameters' names (job, "
        "state, origin, node, created_from, created_to, since, q): every execution they "
        "match. `{}` matches all. Give either this or `ids`.",
    )
    reason = StrictCharField(
        max_length=REASON_MAX,
        help_text="Required; recorded in the audit log (and on each rerun).",
    )

    def validate_filter(self, value):
        unknown = sorted(set(value) - set(ExecutionFilterSerializer().fields))
        if unknown:
            raise serializers.ValidationError(f"Unknown filters: {', '.join(unknown)}.")
        params = ExecutionFilterSerializer(data=value)
        if not params.is_valid():
            raise serializers.ValidationError(params.errors)
        return params.validated_data

    def validate_reason(self, value):
        if not value.strip():
            raise serializers.ValidationError("A reason is required for a bulk action.")
        return value.strip()

    def validate(self, attrs):
        if ("ids" in attrs) == ("filter" in attrs):
            raise serializers.ValidationError(
                {"non_field_errors": ["Give either ids or filter (and not both)."]}
            )
        return attrs


class BulkNotActedSerializer(serializers.Serializer):
    why = serializers.CharField()
    count = serializers.IntegerField()
    executions = serializers.ListField(child=serializers.IntegerField())


class BulkResultSerializer(serializers.Serializer):
    action = serializers.CharField()
    matched = serializers.IntegerField(help_text="Executions selected (that exist).")
    acted = serializers.IntegerField(help_text="Executions rerun or cancelled.")
    executions = serializers.ListField(
        child=serializers.IntegerField(), help_text="The ids of the executions acted on."
    )
    created = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="For rerun: the new executions, in the order of `executions`.",
    )
    not_acted = serializers.IntegerField(
        help_text="Executions that could not take the action (e.g. a finished run cannot "
        "be cancelled); `not_acted_reasons` says why."
    )
    not_acted_reasons = BulkNotActedSerializer(many=True)
    missing = serializers.ListField(
        child=serializers.IntegerField(), help_text="Ids given that do not exist."
    )
    audit_entry = serializers.IntegerField(help_text="The one audit entry of this action.")


class TargetParameterSerializer(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.ChoiceField(
        choices=list(catalogue.KINDS.values()),
        help_text="How a job passes it: in args (positional), kwargs (keyword), either, or "
        "collected by *args (var_positional) or **kwargs (var_keyword).",
    )
    type = serializers.CharField(
        help_text='The JSON types accepted, e.g. "int", "str | null"; "any" when untyped.'
    )
    required = serializers.BooleanField()
    has_default = serializers.BooleanField()
    default = serializers.JSONField(allow_null=True, help_text="null when has_default is false.")
    overridable = serializers.BooleanField(
        help_text="Whether an operator may change it in a run-now (else a schedule editor)."
    )


class TargetJobSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class TargetSerializer(serializers.Serializer):
    """A registered job target: its contract and the jobs that name it."""

    name = serializers.CharField()
    description = serializers.CharField()
    module = serializers.CharField(help_text="The Python module that registered it.")
    parameters = TargetParameterSerializer(many=True)
    jobs = TargetJobSerializer(many=True)
