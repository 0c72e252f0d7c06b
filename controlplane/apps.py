from django.apps import AppConfig


class ControlplaneConfig(AppConfig):
    name = "controlplane"
    verbose_name = "Control plane"

    def ready(self):
        from axes.signals import user_locked_out

        from controlplane.security import audit_lockout

        user_locked_out.connect(audit_lockout, dispatch_uid="controlplane.audit_lockout")
