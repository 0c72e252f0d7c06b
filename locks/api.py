"""The REST API for locks and scheduler nodes: read them, force-release, clean up.

Reads need the view permission of the model; the two actions need the operator
permissions named in ``action_permissions`` (controlplane.api.RolePermission). Every
state change goes through locks/maintenance.py, which audits it with ``request.user``
(for a token request, the token's user).
"""

from __future__ import annotations

from django.db.models import BooleanField, ExpressionWrapper, F, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from controlplane.api import BoundedJSONParser, IdPagination, NamePagination
from controlplane.dashboard import DbNow, nodes_with_age, running_counts
from locks import maintenance
from locks.leases import InvalidLockName, validate_lock_name
from locks.models import Lock, SchedulerNode
from locks.serializers import (
    DEFAULT_CLEANUP_REASON,
    CleanupResultSerializer,
    CleanupStaleSerializer,
    ForceReleaseResultSerializer,
    ForceReleaseSerializer,
    LockListQuerySerializer,
    LocksApiErrorSerializer,
    LockSerializer,
    NodeListQuerySerializer,
    SchedulerNodeSerializer,
)
from locks.views import HELD

# Any path reaches the view, which answers 400 for a name outside the lock name rules
# (locks.leases.validate_lock_name): letters, digits, - _ . : @ + = and "/" between
# parts, none of them "." or "..". The router tries the detail route before the detail
# actions, so a name must not swallow "/force_release/".
LOCK_NAME_REGEX = r"(?:(?!/force_release/$)[\s\S])+"
# Node ids are host:pid:random (or whatever --node-id said).
NODE_ID_REGEX = r"[\s\S]+"


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(LocksApiErrorSerializer, description=description)


UNAUTHENTICATED = _error("No credentials, or a bad token.")
FORBIDDEN = _error("Your role lacks the permission this needs.")
NOT_JSON = _error("The body is not application/json.")
LOCK_NAME = OpenApiParameter(
    "name",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    description="The lock's name: letters, digits, - _ . : @ + = and / between parts (no "
    'part empty, "." or ".."), at most 200 characters. Percent-encode "/" as %2F: an HTTP '
    "client may rewrite a path otherwise.",
)


def _params(request) -> dict:
    # A plain dict, not the QueryDict: DRF reads a blank value in a QueryDict as "left
    # out", and `?state=` should be refused, not ignored.
    return request.query_params.dict()


def _can_exist(key: str) -> bool:
    """PostgreSQL text cannot hold NUL: no row has such a key (and asking would fail)."""
    return "\x00" not in key


@extend_schema_view(
    list=extend_schema(
        summary="Held and stale locks (all locks with ?all=true)",
        parameters=[LockListQuerySerializer],
        responses={
            200: LockSerializer(many=True),
            400: _error("A bad query parameter (or page_size, or cursor), named in the body."),
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
        },
    ),
    retrieve=extend_schema(
        summary="One lock, held or not",
        parameters=[LOCK_NAME],
        responses={
            200: LockSerializer,
            400: _error("Not a lock name (the body names `name`)."),
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            404: _error("There is no lock of that name (the body names `name`)."),
        },
    ),
)
class LockViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Cluster-wide locks: leases in database time with fencing tokens."""

    serializer_class = LockSerializer
    pagination_class = NamePagination
    # JSON bodies only: a multipart body with no parts reads as {} and would slip through.
    parser_classes = [BoundedJSONParser]
    lookup_field = "name"
    lookup_value_regex = LOCK_NAME_REGEX
    action_permissions = {
        "force_release": "locks.force_release_lock",
        "cleanup_stale": "locks.cleanup_stale_locks",
    }

    def get_queryset(self):
        holder_state = SchedulerNode.objects.filter(id=OuterRef("holder")).values("state")[:1]
        return Lock.objects.annotate(
            expires_in=F("locked_until") - DbNow(),
            # NULL (a row that never had a lease) reads as not held, never as null.
            held=Coalesce(ExpressionWrapper(HELD, output_field=BooleanField()), Value(False)),
            holder_state=Subquery(holder_state),
        )

    def list(self, request, *args, **kwargs):
        query = LockListQuerySerializer(data=_params(request))
        query.is_valid(raise_exception=True)
        locks = self.get_queryset()
        if not query.validated_data["all"]:
            locks = locks.filter(HELD)
        page = self.paginate_queryset(locks)
        _attach_stale_reasons(page)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def get_object(self):
        name = _lock_name(self.kwargs["name"])
        lock = self.get_queryset().filter(name=name).first()
        if lock is None:
            raise maintenance.UnknownLock(f"there is no lock named {name!r}")
        self.check_object_permissions(self.request, lock)
        _attach_stale_reasons([lock])
        return lock

    @extend_schema(
        summary="Force-release a lock (reason required; audited)",
        description="Frees the lock now and bumps its fencing token, so the old holder's "
        "extend and release fail and it cannot disturb the next holder.",
        parameters=[LOCK_NAME],
        request=ForceReleaseSerializer,
        responses={
            200: ForceReleaseResultSerializer,
            400: _error(
                "No reason (the body names `reason`), not a lock name (`name`), or a "
                "malformed body."
            ),
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            404: _error("There is no lock of that name (the body names `name`)."),
            409: _error("Nobody holds the lock (the body names `name`)."),
            415: NOT_JSON,
        },
    )
    @action(detail=True, methods=["post"])
    def force_release(self, request, name: str):
        name = _lock_name(name)
        body = ForceReleaseSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = maintenance.force_release(name, request.user, body.validated_data["reason"])
        return Response(ForceReleaseResultSerializer({"name": name, **result}).data)

    @extend_schema(
        summary="Release every stale lock (audited)",
        description="A lock is stale when its holder can no longer release it: its node "
        "is dead or stopped, its execution has finished, or its lease ran out.",
        request=CleanupStaleSerializer,
        responses={
            200: CleanupResultSerializer,
            400: _error("A malformed body."),
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            415: NOT_JSON,
        },
    )
    @action(detail=False, methods=["post"])
    def cleanup_stale(self, request):
        body = CleanupStaleSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        reason = body.validated_data.get("reason", "").strip() or DEFAULT_CLEANUP_REASON
        released = maintenance.cleanup_stale_locks(request.user, reason)
        return Response(CleanupResultSerializer({"released": released}).data)


def _lock_name(name: str) -> str:
    """The name from the path, or a 400 naming `name` (nothing is looked up or changed)."""
    try:
        validate_lock_name(name)
    except InvalidLockName as e:
        raise ValidationError({"name": [str(e)]}) from None
    return name


def _attach_stale_reasons(locks: list[Lock]) -> None:
    """Set ``stale`` and ``stale_reason`` on each lock (one query for the lot)."""
    stale = {s.name: s.reason for s in maintenance.stale_locks([lock.name for lock in locks])}
    for lock in locks:
        lock.stale_reason = stale.get(lock.name)
        lock.stale = lock.stale_reason is not None


@extend_schema_view(
    list=extend_schema(
        summary="Scheduler nodes, live and gone",
        parameters=[NodeListQuerySerializer],
        responses={
            200: SchedulerNodeSerializer(many=True),
            400: _error("A bad query parameter (or page_size, or cursor), named in the body."),
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
        },
    ),
    retrieve=extend_schema(
        summary="One scheduler node",
        parameters=[
            OpenApiParameter(
                "id",
                OpenApiTypes.STR,
                OpenApiParameter.PATH,
                description="The node's id, host:pid:random unless the node was given one.",
            )
        ],
        responses={
            200: SchedulerNodeSerializer,
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            404: _error("There is no node with that id (the body names `id`)."),
        },
    ),
)
class SchedulerNodeViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Scheduler nodes and their liveness (heartbeat age in database time)."""

    serializer_class = SchedulerNodeSerializer
    pagination_class = IdPagination
    lookup_field = "id"
    lookup_value_regex = NODE_ID_REGEX

    def get_queryset(self):
        return nodes_with_age()

    def list(self, request, *args, **kwargs):
        query = NodeListQuerySerializer(data=_params(request))
        query.is_valid(raise_exception=True)
        nodes = self.get_queryset()
        if "state" in query.validated_data:
            nodes = nodes.filter(state=query.validated_data["state"])
        page = self.paginate_queryset(nodes)
        _attach_running_counts(page)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def get_object(self):
        node_id = self.kwargs["id"]
        node = self.get_queryset().filter(id=node_id).first() if _can_exist(node_id) else None
        if node is None:
            raise NotFound({"id": [f"there is no node with id {node_id!r}"]})
        self.check_object_permissions(self.request, node)
        _attach_running_counts([node])
        return node


def _attach_running_counts(nodes: list[SchedulerNode]) -> None:
    counts = running_counts(node.id for node in nodes)
    for node in nodes:
        node.running_count = counts.get(node.id, 0)


def register(router) -> None:
    router.register("locks", LockViewSet, basename="api-lock")
    router.register("nodes", SchedulerNodeViewSet, basename="api-node")
