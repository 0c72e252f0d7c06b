"""Revoke the plaintext API tokens of rest_framework.authtoken (issue 10).

Those keys sat in the database as they were, so they are revoked, not converted: each
is deleted with an audit entry naming its user, and the table goes with the app. Users
create new tokens (the dashboard's API tokens page, or manage.py create_api_token); the
new ones are stored hashed and shown once. See CHANGELOG.md.
"""

from django.db import migrations

ACTOR = "migration controlplane.0004"


def revoke(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if "authtoken_token" not in connection.introspection.table_names(cursor):
            return
        cursor.execute(
            "SELECT u.id, u.username FROM authtoken_token t JOIN auth_user u ON u.id = t.user_id"
        )
        owners = cursor.fetchall()
        cursor.execute("DROP TABLE authtoken_token")
    AuditEntry = apps.get_model("controlplane", "AuditEntry")
    for user_id, username in owners:
        AuditEntry.objects.create(
            user_id=user_id,
            actor=ACTOR,
            action="token.revoke",
            object_type="user",
            object_id=username,
            reason="plaintext API tokens revoked: create a new token (stored hashed)",
        )


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0003_apitoken"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(revoke, migrations.RunPython.noop)]
