"""Forms for defining jobs and triggers: targets come from the registry only."""

from __future__ import annotations

from django import forms

from jobs import registry
from jobs.models import Job, Trigger


class JobForm(forms.ModelForm):
    # A choice among registered targets: a dotted path typed by a user is never imported.
    target = forms.ChoiceField(choices=registry.target_choices)

    class Meta:
        model = Job
        fields = [
            "name", "description", "target", "args", "kwargs", "executor", "timeout",
            "max_attempts", "retry_backoff", "recover", "concurrency_policy", "paused",
        ]  # fmt: skip


class TriggerForm(forms.ModelForm):
    class Meta:
        model = Trigger
        fields = [
            "job", "kind", "cron", "timezone", "interval", "run_at", "start_at", "end_at",
            "misfire_policy", "misfire_grace", "paused",
        ]  # fmt: skip
