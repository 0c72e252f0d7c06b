"""The cancel_execution permission, given to the operator and admin roles."""

from django.contrib.auth.management import create_permissions
from django.db import migrations


def sync_roles(apps, schema_editor):
    # Permissions are normally created after all migrations; the roles need this one now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    from controlplane.roles import sync_roles

    sync_roles(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"))


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0009_run_output_progress_cancel"),
        # The role groups, and the permissions of the other apps they hold.
        ("controlplane", "0005_security_roles"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="execution",
            options={
                "permissions": [
                    ("rerun_execution", "Can rerun an execution"),
                    ("cancel_execution", "Can cancel an execution"),
                ]
            },
        ),
        migrations.RunPython(sync_roles, migrations.RunPython.noop),
    ]
