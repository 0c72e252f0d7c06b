"""Jobs (what runs), triggers (when) and executions (the audit history of every run)."""

from __future__ import annotations

import datetime
import re
import zoneinfo

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.core.exceptions import ValidationError
from django.db import connection, models
from django.db.models import F, Q
from django.db.models.functions import Now

from controlplane import durations, limits
from jobs import registry, schedule, secrets
from jobs.search import ArgumentsText


def validate_target(value: str) -> None:
    if not registry.is_registered(value):
        raise ValidationError(
            "%(value)s is not a registered job target. Choose one of: %(names)s",
            params={"value": value, "names": ", ".join(registry.target_names()) or "(none)"},
            code="unknown_target",
        )


def validate_timezone(value: str) -> None:
    try:
        schedule.validate_timezone(value)
    except ValueError as e:
        raise ValidationError(str(e), code="invalid_timezone") from None


def validate_cron(value: str) -> None:
    try:
        schedule.validate_cron(value)
    except ValueError as e:
        raise ValidationError(str(e), code="invalid_cron") from None


def _check_arguments(value, code: str) -> None:
    """Bounds every stored args/kwargs value: nesting, NUL (PostgreSQL's jsonb cannot
    store U+0000), size (SCHEDULER_ARGS_MAX_BYTES) and well-formed secret references."""
    try:
        limits.check_json(value, settings.SCHEDULER_ARGS_MAX_DEPTH)
    except limits.InputError as e:
        raise ValidationError(str(e), code=code) from None
    size, limit = limits.json_size(value), settings.SCHEDULER_ARGS_MAX_BYTES
    if size > limit:
        raise ValidationError(f"Too large: {size} bytes as JSON, at most {limit}.", code=code)
    problems = secrets.reference_errors(value)
    if problems:
        raise ValidationError(problems, code=code)


def validate_args(value) -> None:
    if not isinstance(value, list):
        raise ValidationError('args must be a JSON list, e.g. [1, "two"]', code="invalid_args")
    _check_arguments(value, "invalid_args")


def validate_kwargs(value) -> None:
    if not isinstance(value, dict):
        raise ValidationError(
            'kwargs must be a JSON object, e.g. {"seconds": 5}', code="invalid_kwargs"
        )
    _check_arguments(value, "invalid_kwargs")


def check_target_call(target: str, args, kwargs) -> None:
    """ValidationError keyed "args"/"kwargs" (each message naming the parameter) unless
    the arguments fit the registered target's signature. Arguments that are not even a
    list and an object are left to validate_args/validate_kwargs."""
    if not registry.is_registered(target) or not isinstance(args, list):
        return
    if not isinstance(kwargs, dict):
        return
    registry.check_call(registry.get_target(target), args, kwargs)


def validate_celery_task_name(value: str) -> None:
    # A name is sent to the workers, never imported here; it only has to look like one.
    if value and not re.fullmatch(r"[A-Za-z_][\w.:-]*", value):
        raise ValidationError(
            "%(value)s is not a Celery task or queue name (letters, digits, . _ : -).",
            params={"value": value},
            code="invalid_name",
        )


def job_lock_name(job_id: int) -> str:
    """The name of the lock held by runs of a `forbid` job."""
    return f"job:{job_id}"


def database_now():
    """PostgreSQL's now(): the only clock that decides anything."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


class Job(models.Model):
    class Executor(models.TextChoices):
        INLINE = "inline", "Inline (threads in the scheduler node)"
        CELERY = "celery", "Celery workers"

    class ConcurrencyPolicy(models.TextChoices):
        ALLOW = "allow", "Allow overlapping runs"
        FORBID = "forbid", "Forbid: skip a fire while a run holds the job's lock"

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    target = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_target],
        help_text="A registered callable. Celery jobs may name a Celery task instead.",
    )
    celery_task = models.CharField(
        max_length=200,
        blank=True,
        default="",
        validators=[validate_celery_task_name],
        help_text="For the celery executor: the name of a task the workers know, run instead "
        "of a registered target (as django-celery-beat does).",
    )
    queue = models.CharField(
        max_length=200,
        default="scheduler",
        validators=[validate_celery_task_name],
        help_text="For the celery executor: the queue its runs are sent to.",
    )
    args = models.JSONField(default=list, blank=True, validators=[validate_args])
    kwargs = models.JSONField(default=dict, blank=True, validators=[validate_kwargs])
    executor = models.CharField(max_length=20, choices=Executor.choices, default=Executor.INLINE)
    timeout = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds a run may take before it is marked timed out."
    )
    max_attempts = models.PositiveIntegerField(
        default=1, help_text="Attempts per fire, the first included (1 means no retries)."
    )
    retry_backoff = models.FloatField(
        default=10.0, help_text="Base seconds of the exponential backoff between attempts."
    )
    recover = models.BooleanField(
        default=False, help_text="Run again when the node running it dies."
    )
    concurrency_policy = models.CharField(
        max_length=10, choices=ConcurrencyPolicy.choices, default=ConcurrencyPolicy.ALLOW
    )
    paused = models.BooleanField(default=False)
    managed_by = models.CharField(
        max_length=500,
        blank=True,
        default="",
        editable=False,
        help_text="The schedule file this job is defined in (manage.py apply_schedules): "
        "applying it again overwrites edits made anywhere else.",
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("run_job", "Can run a job now"),
            ("pause_job", "Can pause and resume jobs and triggers"),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        self.updated_at = Now()
        super().save(*args, **kwargs)
        self.refresh_from_db(fields=["updated_at"])

    @property
    def lock_name(self) -> str:
        """The lock a `forbid` job's runs hold."""
        return job_lock_name(self.pk)

    def clean(self):
        errors = {}
        if self.celery_task and self.executor != self.Executor.CELERY:
            errors["celery_task"] = "A Celery task runs only with the celery executor."
        elif self.celery_task and self.target:
            errors["target"] = "Choose a registered target or a Celery task, not both."
        elif not self.celery_task and not self.target:
            errors["target"] = "Choose a registered target" + (
                " (or name a Celery task)." if self.executor == self.Executor.CELERY else "."
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            errors["max_attempts"] = "At least 1."
        if self.retry_backoff is not None and self.retry_backoff < 0:
            errors["retry_backoff"] = "Must not be negative."
        if self.timeout is not None and self.timeout < 1:
            errors["timeout"] = "At least 1 second, or empty for no timeout."
        if self.target and not errors:
            try:
                validate_args(self.args)
                validate_kwargs(self.kwargs)
            except ValidationError:
                pass  # reported on its field by the field's own validator
            else:
                try:
                    check_target_call(self.target, self.args, self.kwargs)
                except ValidationError as e:
                    errors.update(e.message_dict)
        if errors:
            raise ValidationError(errors)


class Trigger(models.Model):
    class Kind(models.TextChoices):
        CRON = "cron", "Cron expression"
        INTERVAL = "interval", "Fixed interval"
        ONCE = "once", "Once at a date-time"

    class MisfirePolicy(models.TextChoices):
        FIRE_ONCE = "fire_once", "Fire once now, coalescing the missed fires"
        SKIP = "skip", "Record missed fires as skipped"
        FIRE_ALL = "fire_all", "Fire every missed fire (bounded per pass)"

    # Indexed: a job's triggers (job pages, the API, a job's delete) and the claim of
    # celery jobs' triggers only (SELECT_DUE_CELERY_TRIGGERS walks them by job).
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="triggers")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CRON)
    cron = models.CharField(
        max_length=200,
        blank=True,
        help_text="Five fields, or six with seconds first (0 0 2 * * * is 02:00:00 daily).",
    )
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    interval = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds.")
    run_at = models.DateTimeField(null=True, blank=True)
    start_at = models.DateTimeField(null=True, blank=True)
    end_at = models.DateTimeField(null=True, blank=True)
    misfire_policy = models.CharField(
        max_length=10, choices=MisfirePolicy.choices, default=MisfirePolicy.FIRE_ONCE
    )
    misfire_grace = models.PositiveIntegerField(
        default=60, help_text="Seconds a fire may be late before it counts as missed."
    )
    paused = models.BooleanField(default=False)
    next_fire_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_fire_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        indexes = [
            # claim_due_triggers and seconds_until_due: due, unpaused triggers by time.
            models.Index(
                fields=["next_fire_at"],
                name="trigger_due_idx",
                condition=Q(paused=False, next_fire_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job.name}: {self.describe()}" if self.job_id else self.describe()

    def save(self, *args, **kwargs):
        # A new trigger, or one whose schedule changed, starts counting from now.
        # Pausing and resuming keep next_fire_at, so the misfire policy sees what was missed.
        if self.pk is None:
            self.reschedule()
        else:
            old = Trigger.objects.filter(pk=self.pk).values(*SCHEDULE_FIELDS).first()
            if old is None or any(old[f] != getattr(self, f) for f in SCHEDULE_FIELDS):
                self.reschedule()
        self.updated_at = Now()
        super().save(*args, **kwargs)
        self.refresh_from_db(fields=["updated_at"])

    def describe(self) -> str:
        if self.kind == self.Kind.CRON:
            return f"cron {self.cron} ({self.timezone})"
        if self.kind == self.Kind.INTERVAL:
            return f"every {durations.duration(self.interval)}"
        if self.run_at is None:
            return "once (no date-time)"
        return f"once at {self.run_at.astimezone(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"

    def clean(self):
        errors = {}
        if self.kind == self.Kind.CRON:
            if not self.cron:
                errors["cron"] = "A cron trigger needs a cron expression."
            else:
                try:
                    schedule.validate_cron(self.cron)
                except ValueError as e:
                    errors["cron"] = str(e)
        elif self.kind == self.Kind.INTERVAL:
            if not self.interval:
                errors["interval"] = "An interval trigger needs an interval of at least 1 second."
        elif self.kind == self.Kind.ONCE:
            if not self.run_at:
                errors["run_at"] = "A one-off trigger needs a date-time to run at."
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            errors["end_at"] = "The window must end after it starts."
        if errors:
            raise ValidationError(errors)

    def tzinfo(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def reschedule(self, now=None) -> None:
        """Set next_fire_at to the first fire time after ``now`` (database time)."""
        now = now or database_now()
        upcoming = schedule.next_fire_times(self, now, 1)
        self.next_fire_at = upcoming[0] if upcoming else None


SCHEDULE_FIELDS = ("kind", "cron", "timezone", "interval", "run_at", "start_at", "end_at")


class Execution(models.Model):
    class Origin(models.TextChoices):
        SCHEDULE = "schedule"
        MANUAL = "manual"
        RERUN = "rerun"
        RETRY = "retry"
        RECOVERY = "recovery"

    class State(models.TextChoices):
        PENDING = "pending"
        DISPATCHED = "dispatched"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        TIMED_OUT = "timed_out"
        CANCELLED = "cancelled"
        ABANDONED = "abandoned"
        SKIPPED = "skipped"

    FINAL_STATES = ("succeeded", "failed", "timed_out", "cancelled", "abandoned", "skipped")

    # No index of its own: execution_job_recent_idx leads with job_id.
    job = models.ForeignKey(
        Job, on_delete=models.CASCADE, related_name="executions", db_index=False
    )
    # Indexed: deleting a trigger sets its executions' trigger_id to NULL (Django asks
    # WHERE trigger_id IN (...)); one_execution_per_fire covers scheduled rows only.
    trigger = models.ForeignKey(
        Trigger, on_delete=models.SET_NULL, null=True, blank=True, related_name="executions"
    )
    scheduled_for = models.DateTimeField()
    origin = models.CharField(max_length=10, choices=Origin.choices)
    state = models.CharField(max_length=12, choices=State.choices)
    attempt = models.PositiveIntegerField(default=1)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    node = models.CharField(max_length=200, blank=True, default="")
    retry_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="retries",
        db_index=False,
        help_text="The first attempt, for retries.",
    )
    rerun_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="reruns",
        db_index=False,
        help_text="The execution this one runs again (reruns and recoveries).",
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_index=False,
    )
    created_at = models.DateTimeField(db_default=Now())
    run_after = models.DateTimeField(db_default=Now(), help_text="Pending until this time.")
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    note = models.TextField(blank=True, default="", help_text="Misfire and recovery notes.")
    published_at = models.DateTimeField(
        null=True, blank=True, help_text="When its Celery message was published."
    )
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="The Celery worker running it last said it was alive."
    )
    fence = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Fencing token: drawn from one sequence each time a node or worker starts "
        "the run, so whoever holds the run now has a larger one than anyone before.",
    )
    # The columns below have database defaults: the engine inserts executions in SQL.
    reason = models.TextField(
        blank=True, db_default="", help_text="Why an operator asked for this run (run now, rerun)."
    )
    result = models.JSONField(
        null=True, blank=True, help_text="What the target returned (JSON, bounded)."
    )
    progress_done = models.FloatField(null=True, blank=True)
    progress_total = models.FloatField(null=True, blank=True)
    progress_message = models.CharField(max_length=500, blank=True, db_default="")
    progress_at = models.DateTimeField(
        null=True, blank=True, help_text="When the run last reported progress."
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.CharField(max_length=200, blank=True, db_default="")
    cancel_reason = models.TextField(blank=True, db_default="")
    lock_lost_at = models.DateTimeField(
        null=True, blank=True, help_text="When the run's job lock was taken from it."
    )

    class Meta:
        permissions = [
            ("rerun_execution", "Can rerun an execution"),
            ("cancel_execution", "Can cancel an execution"),
        ]
        constraints = [
            # The idempotency key of scheduled fires: two nodes can never record one twice.
            models.UniqueConstraint(
                fields=["trigger", "scheduled_for"],
                condition=Q(origin="schedule"),
                name="one_execution_per_fire",
            ),
        ]
        indexes = [
            # claim_pending_executions: runnable pending executions by run_after.
            models.Index(
                fields=["run_after"], name="execution_pending_idx", condition=Q(state="pending")
            ),
            # recover_dead_nodes: a dead node's unfinished executions.
            models.Index(
                fields=["node"],
                name="execution_unfinished_idx",
                condition=Q(state__in=["dispatched", "running"]),
            ),
            # Execution history, newest first, and per job.
            models.Index(fields=["-created_at", "-id"], name="execution_recent_idx"),
            # ... and per job (the job page, the executions page's job filter, the jobs
            # list's last result; also the job FK's own index: a job's delete finds its
            # executions through it).
            models.Index(fields=["job", "-created_at"], name="execution_job_recent_idx"),
            # A chain's retries and reruns (the execution page), and the FK lookups of a
            # delete (SET_NULL). Mostly NULL: indexing only the set rows keeps every insert
            # and non-HOT update of the hot path from adding a NULL entry to each.
            models.Index(
                fields=["retry_of"],
                name="execution_retry_of_idx",
                condition=Q(retry_of__isnull=False),
            ),
            models.Index(
                fields=["rerun_of"],
                name="execution_rerun_of_idx",
                condition=Q(rerun_of__isnull=False),
            ),
            # A user's delete (SET_NULL) finds the runs they asked for.
            models.Index(
                fields=["requested_by"],
                name="execution_requested_by_idx",
                condition=Q(requested_by__isnull=False),
            ),
            # The executions page filtered by node, state or origin, newest first. Without
            # them a filter whose rows are all old (a dead node, last month's incident) walks
            # execution_recent_idx through the whole table. Succeeded and scheduled rows are
            # most of the table and found at once by execution_recent_idx, so the state and
            # origin indexes leave them out and stay small.
            # The node filter matches a prefix of the node id (LIKE 'prefix%'):
            # varchar_pattern_ops lets the btree serve that range, and equality too.
            models.Index(
                OpClass(F("node"), name="varchar_pattern_ops"),
                F("created_at").desc(),
                F("id").desc(),
                name="execution_node_prefix_idx",
            ),
            models.Index(
                fields=["state", "-created_at", "-id"],
                name="execution_state_recent_idx",
                condition=~Q(state="succeeded"),
            ),
            models.Index(
                fields=["origin", "-created_at", "-id"],
                name="execution_origin_recent_idx",
                condition=~Q(origin="schedule"),
            ),
            # Overview: the latest failures, found directly even when they are rare.
            models.Index(
                fields=["-created_at", "-id"],
                name="execution_failed_recent_idx",
                condition=Q(state__in=["failed", "timed_out", "abandoned"]),
            ),
            # The executions list's text search (jobs/search.py), ILIKE '%text%' over the
            # error and the arguments at any table size. Most runs succeed with no error:
            # the error index holds only the rows that have one.
            GinIndex(
                OpClass(F("error"), name="gin_trgm_ops"),
                name="execution_error_trgm_idx",
                condition=~Q(error=""),
            ),
            GinIndex(OpClass(ArgumentsText(), name="gin_trgm_ops"), name="execution_args_trgm_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.job_id} {self.state}"

    @property
    def is_finished(self) -> bool:
        return self.state in self.FINAL_STATES


def queue_manual_run(job: Job, user=None, args=None, kwargs=None, reason: str = "") -> Execution:
    """Queue a run of ``job`` now, outside its schedule; nodes pick it up."""
    return Execution.objects.create(
        job=job,
        scheduled_for=Now(),
        origin=Execution.Origin.MANUAL,
        state=Execution.State.PENDING,
        args=job.args if args is None else args,
        kwargs=job.kwargs if kwargs is None else kwargs,
        requested_by=user,
        reason=reason,
    )


class ExecutionLogLine(models.Model):
    """One line a run logged or printed, in the order its execution produced them.

    Kept apart from the execution row (which the engine updates on every state change),
    bounded per execution by SCHEDULER_LOG_LIMIT, and pruned with the history.
    """

    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="log_lines", db_index=False
    )
    #: 0, 1, 2, ... per execution: the API pages the log by this offset.
    seq = models.PositiveIntegerField()
    at = models.DateTimeField(help_text="When the line was produced (database time).")
    #: A logging level name (DEBUG ... CRITICAL), STDOUT or STDERR for print output.
    level = models.CharField(max_length=10)
    message = models.TextField()

    class Meta:
        constraints = [
            # The log page and GET /executions/<id>/log/?offset=: lines by execution, in order.
            models.UniqueConstraint(fields=["execution", "seq"], name="one_log_line_per_seq"),
        ]

    def __str__(self) -> str:
        return f"#{self.execution_id}:{self.seq} {self.level} {self.message[:60]}"


class ExecutionEvent(models.Model):
    """Something that happened to a run beyond the times on its row: a progress
    milestone, a lost lock, a cancel request, a note. An execution's timeline merges these
    with its row's times (created, claimed, started, finished) and its retries."""

    class Kind(models.TextChoices):
        PROGRESS = "progress"
        LOCK_LOST = "lock_lost"
        CANCEL_REQUESTED = "cancel_requested"
        NOTE = "note"

    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    at = models.DateTimeField(db_default=Now())
    kind = models.CharField(max_length=20, choices=Kind.choices)
    #: Who or what made it happen: a user name, a node or worker id.
    actor = models.CharField(max_length=200, blank=True, default="")
    message = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            # The execution page's timeline: one execution's events in order.
            models.Index(fields=["execution", "at"], name="execution_event_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.execution_id} {self.kind} {self.message[:60]}"


#: Upper bounds (ms) of the fire-lag histogram's buckets; the last bucket is everything
#: above the last bound. The triggers of migration 0012 bucket lags with these same
#: bounds (jobs_lag_bucket); a test checks that the two agree.
LAG_BUCKET_BOUNDS_MS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


class RunRollup(models.Model):
    """Finished runs of one job, per minute or hour of their creation, per final state.

    Written only by the database: statement-level triggers on jobs_execution (migration
    0012) add each row's contribution when it reaches a final state and move it when its
    state or times change, whichever process wrote it (node, Celery worker, recovery,
    cancel, a misfire's skip, an admin edit). The dashboard's trends and 24-hour counts
    read these rows, never a day of executions. Deleting executions (pruning) leaves the
    rollup alone: it has its own retention.

    Minute and hour rows live in two tables so that each is dense on disk: a read of a
    week of hours never reads pages full of minutes.
    """

    # No index of its own: the unique constraint of each table leads with job_id.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="+", db_index=False)
    #: The start of the minute or hour (UTC) in which the executions were created.
    bucket = models.DateTimeField()
    state = models.CharField(max_length=12, choices=Execution.State.choices)
    runs = models.IntegerField(default=0)
    #: Runs with both a start and a finish time, whose durations the next two sum up.
    timed_runs = models.IntegerField(default=0)
    duration_ms_sum = models.FloatField(default=0)
    #: The longest run ever added to this row (a max cannot be taken back).
    duration_ms_max = models.FloatField(null=True)
    #: Scheduled fires with a dispatch time: dispatched_at - scheduled_for.
    lag_fires = models.IntegerField(default=0)
    lag_ms_sum = models.FloatField(default=0)
    lag_ms_max = models.FloatField(null=True)
    #: Fires per lag slot: lag_0 under the first bound of LAG_BUCKET_BOUNDS_MS, lag_k from
    #: bound k up to the next, lag_12 from the last bound up; so that percentiles can be
    #: summed over time. Plain columns, not an array: a week of rows sums them 2.5 times
    #: faster.
    lag_0 = models.IntegerField(default=0)
    lag_1 = models.IntegerField(default=0)
    lag_2 = models.IntegerField(default=0)
    lag_3 = models.IntegerField(default=0)
    lag_4 = models.IntegerField(default=0)
    lag_5 = models.IntegerField(default=0)
    lag_6 = models.IntegerField(default=0)
    lag_7 = models.IntegerField(default=0)
    lag_8 = models.IntegerField(default=0)
    lag_9 = models.IntegerField(default=0)
    lag_10 = models.IntegerField(default=0)
    lag_11 = models.IntegerField(default=0)
    lag_12 = models.IntegerField(default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.job_id} {self.bucket:%Y-%m-%d %H:%M} {self.state}"

    @property
    def lag_ms_hist(self) -> list[int]:
        return [getattr(self, f"lag_{i}") for i in range(len(LAG_BUCKET_BOUNDS_MS) + 1)]


class MinuteRollup(RunRollup):
    """A job's finished runs per minute: the 24-hour counts' first hour, a job's day."""

    class Meta:
        constraints = [
            # The triggers' upsert key; also a job's rows by time (its 24-hour charts).
            models.UniqueConstraint(
                fields=["job", "bucket", "state"], name="one_minute_rollup_row"
            ),
        ]
        indexes = [
            # The 24-hour counts' first hour (every job) and the pruning.
            models.Index(fields=["bucket"], name="minute_rollup_bucket_idx"),
        ]


class HourRollup(RunRollup):
    """A job's finished runs per hour: the overview's counts and trends, a job's week."""

    class Meta:
        constraints = [
            # The triggers' upsert key; also a job's rows by time (its 7-day charts).
            models.UniqueConstraint(fields=["job", "bucket", "state"], name="one_hour_rollup_row"),
        ]
        indexes = [
            # The overview's counts and trends (every job, a time range) and the pruning.
            models.Index(fields=["bucket"], name="hour_rollup_bucket_idx"),
        ]
