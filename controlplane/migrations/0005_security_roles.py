"""Give the admin role the security housekeeping permissions (API tokens, lockouts)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations


def sync(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    from controlplane.roles import sync_roles

    sync_roles(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"))


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0004_revoke_plaintext_tokens"),
        ("axes", "0010_accessattemptexpiration"),
    ]

    operations = [migrations.RunPython(sync, migrations.RunPython.noop)]
