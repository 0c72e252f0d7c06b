"""The REST API for a user's own API tokens: list them, revoke one (audited).

Tokens are made on the dashboard's API tokens page or with `manage.py create_api_token`,
not through the API: a leaked key must not be able to mint others that outlive its
revocation. Any authenticated user sees and revokes only their own tokens; a key may
revoke itself.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, serializers, viewsets
from rest_framework.exceptions import NotFound

from controlplane.api import BoundedJSONParser, ListPagination
from controlplane.models import ApiToken
from controlplane.tokens import revoke_token


class ApiTokenSerializer(serializers.ModelSerializer):
    key_starts = serializers.SerializerMethodField(
        help_text="The key's first 8 characters, to tell tokens apart. The key itself is "
        "never shown again."
    )
    expired = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "key_starts", "created", "expiry", "expired", "last_used_at"]
        read_only_fields = fields

    def get_key_starts(self, token: ApiToken) -> str:
        return token.token_key[:8]


class TokenPagination(ListPagination):
    """The same pages as every list, newest first."""

    ordering = ("-created", "-id")


class TokenApiErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


def _error(text: str) -> OpenApiResponse:
    return OpenApiResponse(TokenApiErrorSerializer, text)


@extend_schema_view(
    list=extend_schema(
        summary="Your API tokens, newest first",
        responses={
            200: ApiTokenSerializer(many=True),
            400: OpenApiResponse(
                OpenApiTypes.OBJECT,
                "A page_size or cursor this list does not accept: the key names it.",
            ),
            401: _error("Not authenticated."),
        },  # fmt: skip
    ),
    destroy=extend_schema(
        summary="Revoke one of your API tokens (audited)",
        responses={
            204: None,
            401: _error("Not authenticated."),
            404: _error("You have no token with that id."),
        },  # fmt: skip
    ),
)
class TokenViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    serializer_class = ApiTokenSerializer
    pagination_class = TokenPagination
    parser_classes = [BoundedJSONParser]
    # Every role manages its own tokens: the queryset is the user's, nobody else's.
    permission_classes = [permissions.IsAuthenticated]
    lookup_value_regex = r"[^/]+"

    def get_queryset(self):
        return ApiToken.objects.filter(user=self.request.user)

    def get_object(self):
        # A JSON 404 for an id that is not a number, as for one that is not yours.
        if not self.kwargs["pk"].isdigit():
            raise NotFound()
        return super().get_object()

    def perform_destroy(self, instance):
        revoke_token(instance, self.request.user, "revoked through the API")


def register(router) -> None:
    router.register("tokens", TokenViewSet, basename="api-token")
