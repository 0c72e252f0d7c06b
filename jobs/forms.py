"""Forms for defining jobs and triggers: targets come from the registry only."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from django import forms
from django.urls import reverse_lazy
from django.utils import timezone as django_timezone
from django.utils.html import format_html, format_html_join

from jobs import registry, schedule
from jobs.models import Job, Trigger

# The date-times a trigger form reads and shows in the trigger's own time zone.
LOCAL_TIME_FIELDS = {"run_at": "Run at", "start_at": "Start at", "end_at": "End at"}

# Which schedule field belongs to which kind; the others are cleared on save, so what
# is stored is what the chosen kind uses (jobs/static/jobs/trigger_form.js hides them).
KIND_FIELDS = {
    Trigger.Kind.CRON: "cron",
    Trigger.Kind.INTERVAL: "interval",
    Trigger.Kind.ONCE: "run_at",
}


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


class TimeZoneInput(forms.TextInput):
    """A text box that offers the IANA zone names as you type (a <datalist>)."""

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        attrs = context["widget"]["attrs"]
        attrs["list"] = f"{attrs.get('id') or name}-zones"
        attrs.update({"autocomplete": "off", "spellcheck": "false", "size": 32})
        attrs["class"] = "vTextField trigger-timezone"
        return context

    def render(self, name, value, attrs=None, renderer=None):
        box = super().render(name, value, attrs, renderer)
        list_id = f"{(attrs or {}).get('id') or name}-zones"
        options = format_html_join("", '<option value="{}"></option>', _zone_options())
        return format_html('{}<datalist id="{}">{}</datalist>', box, list_id, options)


def _zone_options():
    return ((name,) for name in schedule.zone_names())


def local_to_aware(value: datetime, zone: ZoneInfo) -> datetime:
    """A wall-clock time read in ``zone``; ValueError for one its DST change skips."""
    aware = value.replace(tzinfo=zone, fold=0)
    back = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back != value:
        raise ValueError(
            f"{value:%Y-%m-%d %H:%M:%S} does not exist in {zone.key}: the clocks skip it "
            "(a daylight saving change). Choose a time outside the gap."
        )
    return aware


class TriggerForm(forms.ModelForm):
    """A trigger: only its kind's fields count, and its date-times are wall-clock times in
    its own time zone (entered and shown so), stored as instants."""

    timezone = forms.CharField(
        label="Time zone",
        max_length=64,
        initial="UTC",
        widget=TimeZoneInput,
        help_text="An IANA name such as Europe/Berlin (any case): start typing to search. Run "
        "at, start and end are in this zone.",
    )

    class Meta:
        model = Trigger
        fields = [
            "job", "kind", "cron", "timezone", "interval", "run_at", "start_at", "end_at",
            "misfire_policy", "misfire_grace", "paused",
        ]  # fmt: skip

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        saved_zone = self._zone(self._saved_zone_name()) or UTC
        zone_name = self._typed_zone_name() or self._saved_zone_name()
        for name, label in LOCAL_TIME_FIELDS.items():
            if name not in self.fields:
                continue
            self.fields[name].label = f"{label} ({zone_name})"
            value = self.initial.get(name)
            if isinstance(value, datetime) and value.tzinfo is not None:
                # Naive wall-clock time in the zone it was saved with: the widgets show it
                # as it is (and a form posted back unchanged reads as unchanged).
                self.initial[name] = value.astimezone(saved_zone).replace(tzinfo=None)

    def _saved_zone_name(self) -> str:
        return self.initial.get("timezone") or self.instance.timezone or "UTC"

    def _typed_zone_name(self) -> str:
        typed = self.data.get(self.add_prefix("timezone")) if self.is_bound else ""
        return schedule.canonical_zone_name(typed) if typed else ""

    @staticmethod
    def _zone(name: str) -> ZoneInfo | None:
        try:
            schedule.validate_timezone(name)
        except ValueError:
            return None
        return ZoneInfo(name)

    def clean_timezone(self):
        name = schedule.canonical_zone_name(self.cleaned_data["timezone"])
        try:
            schedule.validate_timezone(name)
        except ValueError as e:
            raise forms.ValidationError(str(e)) from None
        return name

    def clean(self):
        data = super().clean()
        kind = data.get("kind")
        if kind in KIND_FIELDS:
            for other_kind, field in KIND_FIELDS.items():
                if other_kind != kind and field in data:
                    data[field] = "" if field == "cron" else None
        zone = self._zone(data["timezone"]) if data.get("timezone") else None
        for name in LOCAL_TIME_FIELDS:
            value = data.get(name)
            if zone is None or not isinstance(value, datetime):
                continue
            # The widget's value was read in the current time zone (UTC): take its wall
            # clock and read it again in the trigger's zone.
            wall = django_timezone.make_naive(value, django_timezone.get_current_timezone())
            try:
                data[name] = local_to_aware(wall, zone)
            except ValueError as e:
                self.add_error(name, str(e))
        return data


class TriggerAdminForm(TriggerForm):
    """A trigger edited on its own page: the trigger form plus the audit reason."""

    reason = _reason_field()
