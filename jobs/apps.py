from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs and schedules"

    def ready(self):
        from django.conf import settings
        from django.utils.module_loading import autodiscover_modules

        from jobs.target_modules import load_target_modules

        # Every installed app may declare job targets in a `targets` module; installed
        # packages and SCHEDULER_TARGET_MODULES add theirs.
        autodiscover_modules("targets")
        if settings.SCHEDULER_DEMO_TARGETS:
            # Only on request: some demo targets write files wherever their path says.
            from jobs import demo_targets  # noqa: F401
        load_target_modules()
