"""The REST API for jobs, triggers and executions (under /api/v1/).

Reads need the model's view permission, schedule edits the admin role's add/change/delete
permissions, and each action the permission the dashboard asks for (``action_permissions``;
see controlplane.api.RolePermission). Actions call jobs.actions, which audit them; schedule
edits are audited here with the before/after of the changed fields, like the admin's.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import Prefetch
from django.db.models.functions import Now
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from controlplane import audit
from controlplane.api import (
    BoundedJSONParser,
    Conflict,
    IdPagination,
    ListPagination,
    NameListPagination,
    NamePagination,
)
from jobs import actions, bulk, catalogue, queries, registry, runlog, search
from jobs.edits import (
    JOB_FIELDS,
    TRIGGER_FIELDS,
    changes,
    job_snapshot_with_triggers,
    snapshot,
)
from jobs.models import Execution, Job, Trigger, database_now
from jobs.schedule import next_fire_times
from jobs.serializers import (
    BulkActionSerializer,
    BulkResultSerializer,
    CancelSerializer,
    ExecutionDetailSerializer,
    ExecutionFilterSerializer,
    ExecutionLogSerializer,
    ExecutionSerializer,
    JobCreateSerializer,
    JobFilterSerializer,
    JobPauseResultSerializer,
    JobSerializer,
    LogQuerySerializer,
    NextFireTimesQuerySerializer,
    NextFireTimesSerializer,
    ReasonSerializer,
    RunNowSerializer,
    TargetSerializer,
    TriggerFilterSerializer,
    TriggerPauseResultSerializer,
    TriggerSerializer,
)

# Any path segment reaches the view, which answers a JSON 404 for one that is not an id
# (the router's default leaves out ".", so "1.5" got the site's HTML 404 page).
ANY_ID = r"[^/]+"


def register(router) -> None:
    router.register("jobs", JobViewSet, basename="api-job")
    router.register("triggers", TriggerViewSet, basename="api-trigger")
    router.register("executions", ExecutionViewSet, basename="api-execution")
    router.register("targets", TargetViewSet, basename="api-target")


# --- schema helpers ----------------------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


_ERRORS = {
    400: OpenApiResponse(
        OpenApiTypes.OBJECT,
        "Invalid input: each key names a field (or `detail` for a malformed body, "
        "`non_field_errors`), each value lists its messages.",
    ),
    401: OpenApiResponse(ErrorSerializer, "Not authenticated."),
    403: OpenApiResponse(ErrorSerializer, "The user's role does not allow this."),
    404: OpenApiResponse(ErrorSerializer, "No such object."),
    409: OpenApiResponse(ErrorSerializer, "The object's state does not allow this."),
    415: OpenApiResponse(ErrorSerializer, "The body is not application/json."),
}


def errors(*codes: int) -> dict:
    return {code: _ERRORS[code] for code in codes}


DELETE_REASON = OpenApiParameter(
    "reason", str, description="Optional; recorded in the audit log.", required=False
)


def _crud_schema(serializer, noun: str, list_params=()):
    return extend_schema_view(
        list=extend_schema(
            summary=f"List {noun}s",
            parameters=list(list_params),
            responses={200: serializer(many=True), **errors(400, 401, 403)},
        ),
        retrieve=extend_schema(
            summary=f"Show a {noun}", responses={200: serializer, **errors(401, 403, 404)}
        ),
        create=extend_schema(
            summary=f"Create a {noun} (admin)",
            responses={201: serializer, **errors(400, 401, 403, 415)},
        ),
        update=extend_schema(
            summary=f"Replace a {noun} (admin)",
            responses={200: serializer, **errors(400, 401, 403, 404, 415)},
        ),
        partial_update=extend_schema(
            summary=f"Change some fields of a {noun} (admin)",
            responses={200: serializer, **errors(400, 401, 403, 404, 415)},
        ),
        destroy=extend_schema(
            summary=f"Delete a {noun} (admin)",
            parameters=[DELETE_REASON],
            responses={204: None, **errors(400, 401, 403, 404)},
        ),
    )


# --- shared pieces -----------------------------------------------------------------------


def _query(request) -> dict:
    """The query string as a plain dict: DRF reads an empty value in a QueryDict as "not
    given", and the API answers ``?job=`` with a 400, as its schema says, not with
    every job."""
    return request.query_params.dict()


def _reason(data) -> str:
    body = ReasonSerializer(data=data)
    body.is_valid(raise_exception=True)
    return body.validated_data["reason"]


def _execution_response(request, execution: Execution, code=status.HTTP_200_OK) -> Response:
    # Read back: the row has database-computed times (scheduled_for=now(), created_at).
    execution = Execution.objects.select_related("job", "requested_by").get(pk=execution.pk)
    queries.with_timings([execution])
    data = ExecutionDetailSerializer(execution, context={"request": request}).data
    return Response(data, status=code)


class _ScheduleViewSet(viewsets.ModelViewSet):
    """Create, update and delete audited like the admin's edits, each under a row lock."""

    parser_classes = [BoundedJSONParser]
    lookup_value_regex = ANY_ID
    audit_kind = ""  # "job" or "trigger"
    audit_fields: list[str] = []

    def get_queryset(self):
        qs = super().get_queryset()
        if self.action in ("update", "partial_update", "destroy"):
            # Locked until the save commits: "before" in the audit entry is exactly what
            # this write replaces, and the node's claim (SKIP LOCKED) cannot move
            # next_fire_at underneath a save that writes the whole row.
            qs = qs.select_for_update(of=("self",))
        return qs

    @transaction.atomic
    def create(self, request, *args, **kwargs):
        return super().create(request, *args, **kwargs)

    @transaction.atomic
    def update(self, request, *args, **kwargs):
        return super().update(request, *args, **kwargs)

    @transaction.atomic
    def destroy(self, request, *args, **kwargs):
        return super().destroy(request, *args, **kwargs)

    # A change to a job that a schedule file manages is made, and answered with a Warning
    # header (code 299, "miscellaneous persistent warning") saying that it will not last.
    managed_by = ""

    def note_managed(self, job: Job) -> None:
        self.managed_by = job.managed_by

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if self.managed_by and response.status_code < 300:
            source = self.managed_by.encode("ascii", "backslashreplace").decode()
            response["Warning"] = (
                f'299 - "managed by {source}: apply_schedules overwrites this change"'
            )
        return response

    def perform_create(self, serializer):
        reason = self.audit_reason = serializer.validated_data.pop("reason", "")
        if isinstance(serializer.validated_data.get("job"), Job):
            self.note_managed(serializer.validated_data["job"])
        obj = serializer.save()
        after = snapshot(obj, self.audit_fields)
        kind = self.audit_kind
        audit.record(self.request.user, f"{kind}.create", kind, obj.pk, reason, None, after)

    def perform_update(self, serializer):
        self.note_managed(self.job_of(serializer.instance))
        before = snapshot(serializer.instance, self.audit_fields)
        reason = serializer.validated_data.pop("reason", "")
        obj = self.save_update(serializer)
        before, after = changes(before, snapshot(obj, self.audit_fields))
        if after:
            kind = self.audit_kind
            audit.record(self.request.user, f"{kind}.change", kind, obj.pk, reason, before, after)

    def save_update(self, serializer):
        return serializer.save()

    def job_of(self, obj) -> Job:
        return obj if isinstance(obj, Job) else obj.job

    def perform_destroy(self, instance):
        self.note_managed(self.job_of(instance))
        reason = _reason(_query(self.request))
        kind = self.audit_kind
        before = self.deletesnapshot(instance)
        audit.record(self.request.user, f"{kind}.delete", kind, instance.pk, reason, before)
        instance.delete()

    def deletesnapshot(self, instance) -> dict:
        return snapshot(instance, self.audit_fields)

    def set_paused(self, setter, result_serializer, paused: bool) -> Response:
        obj = self.get_object()
        reason = _reason(self.request.data)
        obj.changed = setter(obj, paused, self.request.user, reason)
        self.note_managed(self.job_of(obj))
        return Response(result_serializer(obj, context=self.get_serializer_context()).data)


# --- jobs --------------------------------------------------------------------------------


@_crud_schema(JobSerializer, "job", list_params=[JobFilterSerializer])
@extend_schema_view(
    create=extend_schema(
        summary="Create a job, and its triggers with it (admin)",
        description="`triggers`, when given, are created in the same transaction as the "
        "job: either all of it is created or, for any invalid field, nothing is.",
        request=JobCreateSerializer,
        responses={201: JobSerializer, **errors(400, 401, 403, 415)},
    ),
)
class JobViewSet(_ScheduleViewSet):
    """Jobs: what runs. Their triggers are listed by id and summary; create them with the
    job or under /triggers/, and change them under /triggers/."""

    queryset = Job.objects.prefetch_related(
        Prefetch("triggers", queryset=Trigger.objects.order_by("id"))
    ).order_by("name")
    serializer_class = JobSerializer
    pagination_class = NamePagination
    audit_kind = "job"
    audit_fields = JOB_FIELDS
    action_permissions = {
        "run": "jobs.run_job",
        "pause": "jobs.pause_job",
        "resume": "jobs.pause_job",
    }

    def get_serializer_class(self):
        return JobCreateSerializer if self.action == "create" else JobSerializer

    def filter_queryset(self, queryset):
        if self.action != "list":
            return queryset
        params = JobFilterSerializer(data=_query(self.request))
        params.is_valid(raise_exception=True)
        if params.validated_data.get("q"):
            queryset = queryset.filter(name__icontains=params.validated_data["q"])
        return queryset

    def perform_create(self, serializer):
        super().perform_create(serializer)
        job = serializer.instance
        for trigger in job.triggers.order_by("pk"):
            after = snapshot(trigger, TRIGGER_FIELDS)
            reason = self.audit_reason
            audit.record(self.request.user, "trigger.create", "trigger", trigger.pk, reason,
                         None, after)  # fmt: skip

    def save_update(self, serializer):
        # Job has no save() of its own that stamps updated_at, unlike Trigger.
        job = serializer.save(updated_at=Now())
        job.refresh_from_db(fields=["updated_at"])
        return job

    def deletesnapshot(self, instance) -> dict:
        return job_snapshot_with_triggers(instance)

    @extend_schema(
        summary="Run a job now (operator)",
        description="Queues a manual run, outside the schedule, with the job's arguments "
        "or the ones given (they replace the job's). They must fit the target's parameters "
        "(400 naming the parameter). Below the admin role, only the parameters the target "
        "declares overridable may differ from the job's own, and no secret reference may "
        "be passed (403 saying which).",
        request=RunNowSerializer,
        responses={201: ExecutionDetailSerializer, **errors(400, 401, 403, 404, 415)},
    )
    @action(detail=True, methods=["post"])
    def run(self, request, pk=None):
        job = self.get_object()
        body = RunNowSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        execution = actions.run_now(job, request.user, **body.validated_data)
        return _execution_response(request, execution, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Pause a job (operator)",
        request=ReasonSerializer,
        responses={200: JobPauseResultSerializer, **errors(400, 401, 403, 404, 415)},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self.set_paused(actions.set_job_paused, JobPauseResultSerializer, True)

    @extend_schema(
        summary="Resume a job (operator)",
        request=ReasonSerializer,
        responses={200: JobPauseResultSerializer, **errors(400, 401, 403, 404, 415)},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self.set_paused(actions.set_job_paused, JobPauseResultSerializer, False)


# --- triggers ----------------------------------------------------------------------------


@_crud_schema(TriggerSerializer, "trigger", list_params=[TriggerFilterSerializer])
class TriggerViewSet(_ScheduleViewSet):
    """Triggers: when a job runs (cron, fixed interval or once, with an optional window)."""

    queryset = Trigger.objects.select_related("job").order_by("id")
    serializer_class = TriggerSerializer
    pagination_class = IdPagination
    audit_kind = "trigger"
    audit_fields = TRIGGER_FIELDS
    action_permissions = {"pause": "jobs.pause_job", "resume": "jobs.pause_job"}

    def filter_queryset(self, queryset):
        if self.action != "list":
            return queryset
        params = TriggerFilterSerializer(data=_query(self.request))
        params.is_valid(raise_exception=True)
        if "job" in params.validated_data:
            queryset = queryset.filter(job_id=params.validated_data["job"])
        return queryset

    @extend_schema(
        summary="A trigger's next fire times",
        description="Computed from database time, in UTC and in the trigger's time zone; "
        "fewer than `count` when its window or one-off time ends sooner.",
        parameters=[NextFireTimesQuerySerializer],
        responses={200: NextFireTimesSerializer, **errors(400, 401, 403, 404, 409)},
    )
    @action(detail=True, methods=["get"])
    def next_fire_times(self, request, pk=None):
        trigger = self.get_object()
        params = NextFireTimesQuerySerializer(data=_query(request))
        params.is_valid(raise_exception=True)
        now = database_now()
        try:
            zone = trigger.tzinfo()
            times = next_fire_times(trigger, now, params.validated_data["count"])
        except (ValueError, LookupError) as e:
            # Only a row saved around validation (bulk inserts, raw SQL) gets here.
            raise Conflict(f"This trigger cannot be scheduled: {e}") from None
        fire_times = [
            {
                "utc": when,
                "local": when.astimezone(zone).isoformat(),
                "zone_abbreviation": when.astimezone(zone).tzname(),
            }
            for when in times
        ]
        data = {
            "trigger": trigger.pk,
            "timezone": trigger.timezone,
            "after": now,
            "paused": trigger.paused or trigger.job.paused,
            "fire_times": fire_times,
        }
        return Response(NextFireTimesSerializer(data).data)

    @extend_schema(
        summary="Pause a trigger (operator)",
        request=ReasonSerializer,
        responses={200: TriggerPauseResultSerializer, **errors(400, 401, 403, 404, 415)},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self.set_paused(actions.set_trigger_paused, TriggerPauseResultSerializer, True)

    @extend_schema(
        summary="Resume a trigger (operator)",
        request=ReasonSerializer,
        responses={200: TriggerPauseResultSerializer, **errors(400, 401, 403, 404, 415)},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self.set_paused(actions.set_trigger_paused, TriggerPauseResultSerializer, False)


# --- executions --------------------------------------------------------------------------


class ExecutionPagination(ListPagination):
    """Keyset pages on (created_at DESC, id DESC), read by jobs.queries.execution_page.

    The same body and parameters as every list (ListPagination); the cursor is the
    dashboard's (queries.Cursor), a position in the index order rather than an offset.
    """

    ordering = ("-created_at", "-id")
    #: Rows found by a text search that the reader may not find (search.visible_match).
    keep = None

    def paginate_queryset(self, queryset, request, view=None):
        self.base_url = request.build_absolute_uri()
        self.page_size = self.get_page_size(request)
        token = request.query_params.get(self.cursor_query_param)
        cursor = None
        if token:
            try:
                cursor = queries.Cursor.decode(token)
            except ValueError as e:
                raise serializers.ValidationError({self.cursor_query_param: [str(e)]}) from None
        self.page = queries.execution_page(queryset, cursor, self.page_size, self.keep)
        return self.page.rows

    def _link(self, position) -> str | None:
        if position is None:
            return None
        return replace_query_param(self.base_url, self.cursor_query_param, position.encode())

    def get_next_link(self):
        return self._link(self.page.older)

    def get_previous_link(self):
        return self._link(self.page.newer)


@extend_schema_view(
    list=extend_schema(
        summary="List executions, newest first",
        parameters=[ExecutionFilterSerializer],
        responses={200: ExecutionSerializer(many=True), **errors(400, 401, 403)},
    ),
    retrieve=extend_schema(
        summary="Show an execution",
        responses={200: ExecutionDetailSerializer, **errors(401, 403, 404)},
    ),
)
class ExecutionViewSet(viewsets.ReadOnlyModelViewSet):
    """Execution history: every scheduled fire, manual run, rerun, retry and recovery."""

    queryset = Execution.objects.select_related("job", "requested_by")
    serializer_class = ExecutionDetailSerializer
    pagination_class = ExecutionPagination
    parser_classes = [BoundedJSONParser]
    lookup_value_regex = ANY_ID
    # A bulk action needs the permission of the action it asks for (bulk.PERMISSIONS),
    # checked in bulk(); rerun_execution here keeps viewers out before the body is read.
    action_permissions = {
        "rerun": "jobs.rerun_execution",
        "cancel": "jobs.cancel_execution",
        "bulk": "jobs.rerun_execution",
    }

    def get_serializer_class(self):
        return ExecutionSerializer if self.action == "list" else ExecutionDetailSerializer

    def list(self, request, *args, **kwargs):
        params = ExecutionFilterSerializer(data=_query(request))
        params.is_valid(raise_exception=True)
        executions = queries.filter_executions(**params.validated_data)
        text = params.validated_data.get("q")
        if text and search.needs_recheck(request.user):
            self.paginator.keep = lambda e: search.visible_match(e, text, request.user)
        page = self.paginate_queryset(executions.select_related("requested_by"))
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def retrieve(self, request, *args, **kwargs):
        execution = self.get_object()
        queries.with_timings([execution])
        return Response(self.get_serializer(execution).data)

    @extend_schema(
        summary="Rerun an execution (operator)",
        description="Queues a new execution with the original's arguments and fire time, "
        "linked to it. 409 for one that has not run yet.",
        request=ReasonSerializer,
        responses={201: ExecutionDetailSerializer, **errors(400, 401, 403, 404, 409, 415)},
    )
    @action(detail=True, methods=["post"])
    def rerun(self, request, pk=None):
        original = self.get_object()
        reason = _reason(request.data)
        try:
            execution = actions.rerun(original, request.user, reason)
        except DjangoValidationError as e:
            raise Conflict(" ".join(e.messages)) from None
        return _execution_response(request, execution, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Cancel an execution (operator)",
        description="Pending or dispatched: cancelled at once, it never starts. Running: "
        "the run is asked to stop (`cancel_requested_at`); the job stops where it checks "
        "`jobs.context.cancelled()`, and past SCHEDULER_CANCEL_GRACE it is recorded "
        "cancelled whatever it does (an inline run's late result is ignored; a Celery "
        "worker process is terminated). Asking a run again changes nothing more. 409 once "
        "it has finished. Audited.",
        request=CancelSerializer,
        responses={200: ExecutionDetailSerializer, **errors(400, 401, 403, 404, 409, 415)},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        execution = self.get_object()
        body = CancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            execution = actions.cancel_execution(
                execution, request.user, body.validated_data["reason"]
            )
        except actions.CannotCancel as e:
            raise Conflict(" ".join(e.messages)) from None
        except Execution.DoesNotExist:
            raise NotFound() from None
        return _execution_response(request, execution)

    @extend_schema(
        summary="Rerun or cancel many executions (operator)",
        description="The executions by `ids`, or every one the executions list's `filter` "
        "matches (its query parameters' names and values; below the admin role, `q` does "
        "not find values redacted for you). Each is rerun or cancelled as its own rerun or "
        "cancel would be, in batches; one that cannot take the action (a finished run "
        "cannot be cancelled, a pending one not rerun) is counted in `not_acted`, with "
        "why. A reason is required. More than SCHEDULER_BULK_LIMIT (default 10,000) "
        "matches: 400 naming the count and the limit, and nothing is done. One audit "
        "entry (`execution.bulk_rerun` or `execution.bulk_cancel`) names every execution "
        "acted on.",
        request=BulkActionSerializer,
        responses={200: BulkResultSerializer, **errors(400, 401, 403, 415)},
    )
    @action(detail=False, methods=["post"])
    def bulk(self, request):
        body = BulkActionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if not request.user.has_perm(bulk.PERMISSIONS[data["action"]]):
            raise PermissionDenied(f"Your role may not {data['action']} executions.")
        selector = "ids" if "ids" in data else "filter"
        try:
            if selector == "ids":
                selection = bulk.by_ids(data["ids"])
            else:
                selection = bulk.by_filter(data["filter"], request.user)
        except bulk.TooMany as e:
            raise serializers.ValidationError({selector: e.messages}) from None
        how = {selector: request.data[selector]}
        outcome = bulk.run(data["action"], selection, request.user, data["reason"], how)
        result = {
            "action": outcome.action,
            "matched": outcome.matched,
            "acted": outcome.acted_count,
            "executions": outcome.acted,
            "created": outcome.created,
            "not_acted": outcome.not_acted_count,
            "not_acted_reasons": [
                {"why": why, "count": len(ids), "executions": ids}
                for why, ids in outcome.not_acted.items()
            ],
            "missing": outcome.missing,
            "audit_entry": outcome.audit_entry,
        }
        return Response(BulkResultSerializer(result).data)

    @extend_schema(
        summary="An execution's log",
        description="The lines the run logged or printed, in order, from `offset` (a "
        "`seq`). Follow a run by asking again with `next_offset`: at once while `more`, "
        "after a pause while it has not `finished`; once it has finished and `more` is "
        "false, the log is complete, except that a run recorded `timed_out` or `cancelled` "
        "while its inline thread went on still adds what the thread prints until it "
        "returns. Messages are redacted below the admin role. The dashboard offers the "
        "whole log as text at /executions/<id>/log.txt.",
        parameters=[LogQuerySerializer],
        responses={200: ExecutionLogSerializer, **errors(400, 401, 403, 404)},
    )
    @action(detail=True, methods=["get"])
    def log(self, request, pk=None):
        # The state first: lines read after a finished state are all of them (the engine
        # writes a run's last lines no later than its final state).
        execution = self.get_object()
        params = LogQuerySerializer(data=_query(request))
        params.is_valid(raise_exception=True)
        offset, limit = params.validated_data["offset"], params.validated_data["limit"]
        found = runlog.lines_from(execution, offset, limit)
        data = {
            "execution": execution.pk,
            "lines": runlog.shown_to(found.lines, request.user),
            "next_offset": offset if found.last_seq is None else found.last_seq + 1,
            "more": found.more,
            "finished": execution.is_finished,
        }
        return Response(ExecutionLogSerializer(data).data)


@extend_schema_view(
    list=extend_schema(
        summary="List the registered job targets",
        responses={200: TargetSerializer(many=True), **errors(400, 401, 403)},
    ),
    retrieve=extend_schema(
        summary="Show a job target",
        responses={200: TargetSerializer, **errors(401, 403, 404)},
    ),
)
class TargetViewSet(viewsets.ViewSet):
    """The target catalogue: what each registered target does, the parameters it takes
    (which an operator may override) and the jobs that use it. Read with the job view
    permission, like the jobs themselves."""

    # Only for RolePermission, which asks for the view permission of this model.
    queryset = Job.objects.none()
    lookup_field = "name"
    lookup_value_regex = r"[^/]+"
    pagination_class = NameListPagination

    def list(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_list(catalogue.catalogue(), request)
        return paginator.get_paginated_response(TargetSerializer(page, many=True).data)

    def retrieve(self, request, name=None):
        try:
            return Response(TargetSerializer(catalogue.entry(name)).data)
        except registry.UnknownTarget as e:
            raise NotFound(str(e)) from None
