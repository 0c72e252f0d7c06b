"""Print a user's API token, creating it if missing: `create_api_token ci-bot [--rotate]`.

Only the key goes to stdout, so a script can capture it:
    TOKEN=$(python manage.py create_api_token ci-bot)
A request with `Authorization: Token <key>` acts as that user, with the user's roles.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from rest_framework.authtoken.models import Token

from controlplane import audit

ACTOR = "manage.py create_api_token"


class Command(BaseCommand):
    help = (
        "Print the REST API token of a user, creating it if the user has none. "
        "--rotate replaces it with a new one (the old key stops working at once). "
        "Creating and rotating are recorded in the audit log."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", help="The user the token authenticates as.")
        parser.add_argument(
            "--rotate", action="store_true", help="Replace the user's token with a new one."
        )

    def handle(self, *args, username: str, rotate: bool, **options):
        User = get_user_model()
        try:
            user = User.objects.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(
                f"There is no user named {username!r}; create it first "
                "(manage.py createsuperuser, or the admin) and give it a role."
            ) from None
        with transaction.atomic():
            # The row lock keeps two rotations of the same user from both creating a token.
            locked = User.objects.select_for_update().get(pk=user.pk)
            old = Token.objects.filter(user=locked).first()
            if old is not None and not rotate:
                token = old
            else:
                if old is not None:
                    old.delete()
                token = Token.objects.create(user=locked)
                action = "token.rotate" if old is not None else "token.create"
                # The key itself is a secret: the audit log only says that it changed.
                audit.record(ACTOR, action, "user", user.get_username())
        if not user.is_active:
            self.stderr.write(
                f"Warning: {username} is inactive; the API refuses its token until it is "
                "active again."
            )
        self.stdout.write(token.key)
