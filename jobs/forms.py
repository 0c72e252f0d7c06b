"""Forms for defining jobs and triggers: targets come from the registry only."""

from __future__ import annotations

from django import forms
from django.urls import reverse_lazy

from jobs import registry
from jobs.models import Job, Trigger


def _reason_field() -> forms.CharField:
    return forms.CharField(
        label="Reason for this change",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Optional; recorded in the audit log with your name and the before/after.",
    )


def _target_choices() -> list[tuple[str, str]]:
    # Blank is allowed: a celery job may name a Celery task instead (the model checks).
    return [("", "---------"), *registry.target_choices()]


class JobForm(forms.ModelForm):
    # A choice among registered targets: a dotted path typed by a user is never imported.
    target = forms.ChoiceField(
        choices=_target_choices,
        required=False,
        # jobs/target_help.js shows the chosen target's description and parameters.
        widget=forms.Select(attrs={"data-target-help": reverse_lazy("target-help")}),
        help_text="What the job runs. See all targets and their parameters on the dashboard's "
        "Targets page.",
    )
    # Not a model field: the admin records it as the reason of the audit entries it writes
    # for this save (the job's and its inline triggers').
    reason = _reason_field()

    class Meta:
        model = Job
        fields = [
            "name", "description", "target", "celery_task", "args", "kwargs", "executor",
            "queue", "timeout", "max_attempts", "retry_backoff", "recover",
            "concurrency_policy", "paused",
        ]  # fmt: skip


class TriggerForm(forms.ModelForm):
    class Meta:
        model = Trigger
        fields = [
            "job", "kind", "cron", "timezone", "interval", "run_at", "start_at", "end_at",
            "misfire_policy", "misfire_grace", "paused",
        ]  # fmt: skip


class TriggerAdminForm(TriggerForm):
    """A trigger edited on its own page: the trigger form plus the audit reason."""

    reason = _reason_field()
