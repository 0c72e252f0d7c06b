"""Make a REST API token for a user and print its key, once:
`create_api_token ci-bot [--name deploy] [--expires-days 90] [--rotate]`.

Only the key goes to stdout, so a script can capture it:
    TOKEN=$(python manage.py create_api_token ci-bot --name deploy)
A request with `Authorization: Token <key>` acts as that user, with the user's roles.
Only a hash of the key is stored: it cannot be printed again. Lost, it is revoked and a
new one made (--rotate does both).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from controlplane.models import ApiToken
from controlplane.tokens import MAX_EXPIRY_DAYS, TokenNameTaken, create_token, revoke_token

ACTOR = "manage.py create_api_token"
DEFAULT_NAME = "cli"


class Command(BaseCommand):
    help = (
        "Make a named REST API token for a user and print its key (the only time it is "
        "shown: only its hash is stored). --rotate revokes the user's token of that name "
        "first. Creating and revoking are recorded in the audit log."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", help="The user the token authenticates as.")
        parser.add_argument(
            "--name", default=DEFAULT_NAME, help=f"The token's name (default {DEFAULT_NAME!r})."
        )
        parser.add_argument(
            "--expires-days",
            type=int,
            default=None,
            help=f"Days until it expires (1 to {MAX_EXPIRY_DAYS}); default: never.",
        )
        parser.add_argument(
            "--rotate",
            action="store_true",
            help="Revoke the user's token of this name, if any, and make a new one.",
        )

    def handle(self, *args, username: str, name: str, expires_days, rotate: bool, **options):
        User = get_user_model()
        try:
            user = User.objects.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(
                f"There is no user named {username!r}; create it first "
                "(manage.py createsuperuser, or the admin) and give it a role."
            ) from None
        name = name.strip()
        if not name or len(name) > 100:
            raise CommandError("--name must be 1 to 100 characters.")
        if expires_days is not None and not 1 <= expires_days <= MAX_EXPIRY_DAYS:
            raise CommandError(f"--expires-days must be between 1 and {MAX_EXPIRY_DAYS}.")
        with transaction.atomic():
            old = ApiToken.objects.select_for_update().filter(user=user, name=name).first()
            if old is not None:
                if not rotate:
                    raise CommandError(
                        f"{username} already has a token named {name!r}; its key cannot be "
                        "shown again (only its hash is stored). Use --rotate to replace it, "
                        "or --name for another."
                    )
                revoke_token(old, ACTOR, "rotated")
            try:
                _token, key = create_token(user, name, expires_days, ACTOR)
            except TokenNameTaken as e:
                raise CommandError(str(e)) from None
        if not user.is_active:
            self.stderr.write(
                f"Warning: {username} is inactive; the API refuses its token until it is "
                "active again."
            )
        self.stdout.write(key)
