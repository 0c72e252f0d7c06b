"""REST API tokens: made and revoked here (audited), checked by ApiTokenAuthentication.

django-rest-knox generates the keys (256 random bits) and stores only their SHA-512
hash; a key is shown once, when it is made. Authentication failures are counted per
client address: past API_THROTTLE_AUTH_FAILURES, the address gets 429 until the period
ends, so keys cannot be guessed at speed.
"""

from __future__ import annotations

import re
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models.functions import Now
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from knox.auth import TokenAuthentication
from rest_framework import exceptions
from rest_framework.throttling import SimpleRateThrottle

from controlplane import audit
from controlplane.models import ApiToken

# What knox makes: 64 hex digits. Anything else is refused before a query.
KEY_PATTERN = re.compile(r"[0-9a-f]{64}")
# A use is recorded at most this often per token: not one write per request.
LAST_USED_EVERY = timedelta(minutes=1)
MAX_EXPIRY_DAYS = 3650


class TokenNameTaken(ValueError):
    pass


def create_token(user, name: str, expires_in_days: int | None, by) -> tuple[ApiToken, str]:
    """Make a token for ``user``; returns the row and the key (the only time it exists)."""
    expiry = None if expires_in_days is None else timedelta(days=expires_in_days)
    try:
        with transaction.atomic():
            token, key = ApiToken.objects.create(user, expiry=expiry, name=name)
            audit.record(by, "token.create", "user", user.get_username(), "",
                         after=_described(token))  # fmt: skip
    except IntegrityError:
        raise TokenNameTaken(f"{user.get_username()} already has a token named {name!r}.") from None
    return token, key


def revoke_token(token: ApiToken, by, reason: str = "") -> None:
    """Delete the token: requests with its key fail from now on."""
    with transaction.atomic():
        audit.record(by, "token.revoke", "user", token.user.get_username(), reason,
                     before=_described(token))  # fmt: skip
        token.delete()


def _described(token: ApiToken) -> dict:
    # Never the key or its hash: the name and the first characters people see.
    return {
        "name": token.name,
        "key_starts": token.token_key[:8],
        "expiry": token.expiry.isoformat() if token.expiry else None,
    }


class AuthFailureThrottle(SimpleRateThrottle):
    """Counts failed token authentications per client address."""

    scope = "auth_failures"

    def get_cache_key(self, request, view=None):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def blocked(self, request) -> bool:
        self.key = self.get_cache_key(request)
        self.now = self.timer()
        self.history = [t for t in self.cache.get(self.key, []) if t > self.now - self.duration]
        return len(self.history) >= self.num_requests

    def record_failure(self, request) -> None:
        if not hasattr(self, "history"):
            self.blocked(request)
        self.history.insert(0, self.now)
        self.cache.set(self.key, self.history, self.duration)


class ApiTokenAuthentication(TokenAuthentication):
    """knox's token authentication, bounded and throttled, recording each token's last use."""

    def authenticate(self, request):
        throttle = AuthFailureThrottle()
        if throttle.blocked(request):
            raise exceptions.Throttled(throttle.wait())
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            throttle.record_failure(request)
            raise

    def authenticate_credentials(self, token: bytes):
        # knox decodes the key as UTF-8 and queries by its first characters: a key that
        # is not hex would fail on either (a 500), so it is refused first.
        if not KEY_PATTERN.fullmatch(token.decode("latin-1")):
            raise exceptions.AuthenticationFailed("Invalid token.")
        user, api_token = super().authenticate_credentials(token)
        now = timezone.now()
        if api_token.last_used_at is None or api_token.last_used_at < now - LAST_USED_EVERY:
            ApiToken.objects.filter(pk=api_token.pk).update(last_used_at=Now())
        return user, api_token


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """The API schema's description of ApiTokenAuthentication: `Authorization: Token <key>`."""

    target_class = ApiTokenAuthentication
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(
            header_name="Authorization", token_prefix="Token"
        )
