"""Dashboard pages and fragments for trends: the overview's charts, a job's charts and
last runs, and the timeline of the next day's fires.

The charts read the run rollup (jobs/trends.py) and are drawn on the server
(jobs/charts.py). Fragments are loaded by htmx and are pages of their own without it.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.decorators import permission_required
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from controlplane.dashboard import format_duration
from controlplane.views import OVERVIEW_PERMISSIONS
from jobs import charts, trends
from jobs.models import Job, Trigger, database_now
from jobs.schedule import next_fire_times

STATE_CSS = {state: f"s-{state}" for state in trends.CHART_STATES}
STRIP_RUNS = 50
#: Fires drawn per trigger on the timeline: a once-a-second interval would otherwise
#: draw 86,400 ticks; past this the lane says it was cut.
TIMELINE_FIRES_PER_TRIGGER = 200
#: Triggers on the timeline, soonest first.
TIMELINE_TRIGGERS = 300
BUSIEST_MINUTES = 5


def format_ms(ms: float | None) -> str:
    """A lag or duration in milliseconds for people: 85 ms, 1.5 s, 3m 12s."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return format_duration(timedelta(milliseconds=ms))


def bin_label(step: timedelta) -> str:
    """What one bar of a chart covers: "hour", "6 hours", "30 minutes"."""
    minutes = int(step.total_seconds() // 60)
    if minutes % 60 == 0:
        hours = minutes // 60
        return "hour" if hours == 1 else f"{hours} hours"
    return "minute" if minutes == 1 else f"{minutes} minutes"


def format_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


# --- overview -----------------------------------------------------------------------


@require_GET
@permission_required(OVERVIEW_PERMISSIONS, raise_exception=True)
def overview_trends(request):
    window = trends.OVERVIEW_WINDOWS.get(request.GET.get("window") or "24h")
    if window is None:
        return HttpResponseBadRequest("window must be one of: 24h, 7d")
    context = {
        **overview_charts(trends.series(window)),
        "windows": trends.OVERVIEW_WINDOWS.values(),
        "window": window,
        "switch_url": reverse("overview-trends"),
    }
    return _render(request, "jobs/trends.html", "jobs/_trends.html", context)


def overview_charts(series: trends.Series) -> dict:
    """Runs by state (stacked), failure rate and fire lag p95 over the window."""
    starts = [b.start for b in series.bins]
    step, label = series.window.bin, series.window.label
    per = bin_label(step)
    stacks = [
        charts.Stack(state.replace("_", " "), STATE_CSS[state],
                     [b.runs.get(state, 0) for b in series.bins])
        for state in trends.CHART_STATES
    ]  # fmt: skip
    counts = ", ".join(
        f"{series.total(s)} {s.replace('_', ' ')}" for s in trends.CHART_STATES if series.total(s)
    )
    runs_summary = (
        f"{series.finished} finished runs in the last {label}"
        + (f": {counts}." if counts else ".")
        + f" Each bar is {'one hour' if per == 'hour' else per}."
    )
    rates = [b.failure_rate for b in series.bins]
    worst = max(((r, b.start) for r, b in zip(rates, series.bins, strict=True) if r), default=None)
    rate_summary = f"Failure rate over the last {label}: {format_rate(series.failure_rate)}" + (
        f"; highest {format_rate(worst[0])} at {worst[1]:%Y-%m-%d %H:%M} UTC." if worst else "."
    )
    lags = [b.lag_ms_p95 for b in series.bins]
    overall_lag = series.lag_ms_p95
    lag_summary = f"Fire lag p95 of scheduled runs over the last {label}: " + (
        format_ms(overall_lag) if overall_lag is not None else "no scheduled run finished"
    )
    peak = max(((v, b.start) for v, b in zip(lags, series.bins, strict=True) if v), default=None)
    lag_summary += (
        f"; highest {format_ms(peak[0])} at {peak[1]:%Y-%m-%d %H:%M} UTC." if peak else "."
    )
    return {
        "runs_chart": charts.stacked_bars(
            f"Runs per {per} by state", starts, step, stacks, runs_summary
        ),
        "runs_summary": runs_summary,
        "rate_chart": charts.line_chart(
            "Failure rate",
            starts,
            step,
            [charts.Stack("failed", "s-failed", rates)],
            rate_summary,
            format_rate,
            top=1.0,
        ),
        "rate_summary": rate_summary,
        "lag_chart": charts.line_chart(
            "Fire lag p95",
            starts,
            step,
            [charts.Stack("p95", "lag", lags)],
            lag_summary,
            format_ms,
            floor=10.0,
        ),
        "lag_summary": lag_summary,
    }


# --- a job's page -------------------------------------------------------------------


def job_page_context(job: Job, window_key: str = "24h") -> dict:
    """The job page's strip of last runs, its day of runs on a time axis and its charts."""
    window = trends.JOB_WINDOWS[window_key]
    return {
        "strip": run_strips([job.pk])[job.pk],
        "day_chart": day_of_runs_chart(job),
        **job_charts(job, trends.series(window, job)),
        "windows": trends.JOB_WINDOWS.values(),
        "window": window,
        "switch_url": reverse("job-trends", args=[job.pk]),
    }


@require_GET
@permission_required(["jobs.view_job", "jobs.view_execution"], raise_exception=True)
def job_trends(request, job_id: int):
    job = get_object_or_404(Job, pk=job_id)
    window = trends.JOB_WINDOWS.get(request.GET.get("window") or "24h")
    if window is None:
        return HttpResponseBadRequest("window must be one of: 24h, 7d")
    context = {
        "job": job,
        **job_charts(job, trends.series(window, job)),
        "windows": trends.JOB_WINDOWS.values(),
        "window": window,
        "switch_url": reverse("job-trends", args=[job.pk]),
    }
    return _render(request, "jobs/job_trends.html", "jobs/_job_trends.html", context)


def job_charts(job: Job, series: trends.Series) -> dict:
    starts = [b.start for b in series.bins]
    step, label = series.window.bin, series.window.label
    averages = [b.duration_ms_avg for b in series.bins]
    longest = [b.duration_ms_max for b in series.bins]
    timed = sum(b.timed_runs for b in series.bins)
    total_ms = sum(b.duration_ms_sum for b in series.bins)
    peak = max((v for v in longest if v is not None), default=None)
    duration_summary = (
        f"{timed} timed runs of {job.name} in the last {label}: average "
        f"{format_ms(total_ms / timed if timed else None)}, longest {format_ms(peak)}."
    )
    rates = [b.success_rate for b in series.bins]
    overall = series.failure_rate
    rate_summary = (
        f"Success rate of {job.name} over the last {label}: "
        f"{format_rate(None if overall is None else 1 - overall)} "
        f"({series.total('succeeded')} succeeded, "
        f"{sum(b.failures for b in series.bins)} failed, timed out or abandoned)."
    )
    return {
        "duration_chart": charts.line_chart(
            "Run duration",
            starts,
            step,
            [charts.Stack("average", "avg", averages), charts.Stack("longest", "max", longest)],
            duration_summary,
            format_ms,
            floor=10.0,
        ),
        "duration_summary": duration_summary,
        "success_chart": charts.line_chart(
            "Success rate",
            starts,
            step,
            [charts.Stack("succeeded", "s-succeeded", rates)],
            rate_summary,
            format_rate,
            top=1.0,
        ),
        "success_summary": rate_summary,
    }


def run_strips(job_ids, n: int = STRIP_RUNS) -> dict[int, list[dict]]:
    """Each job's last ``n`` runs as the strip template shows them, in one query: for a
    list of jobs, ``{% include "jobs/_run_strip.html" with runs=strips|get:job.pk %}``
    or the like."""
    return {
        job_id: strip_marks(marks)
        for job_id, marks in trends.recent_runs_by_job(job_ids, n).items()
    }


def strip_marks(marks: list[trends.RunMark]) -> list[dict]:
    """What the strip template shows of each run: its link, colour and tooltip."""
    shown = []
    for mark in marks:
        title = f"#{mark.id} {mark.state.replace('_', ' ')}, {mark.origin}, "
        title += f"created {mark.created_at:%Y-%m-%d %H:%M:%S} UTC"
        if mark.duration is not None:
            title += f", took {format_duration(mark.duration)}"
        shown.append({"id": mark.id, "state": mark.state, "title": title})
    return shown


def day_of_runs_chart(job: Job):
    spans, now = trends.runs_of_last_day(job)
    bars = [
        charts.Span(
            s.start, s.end, f"s-{s.state}",
            f"#{s.id} {s.state.replace('_', ' ')}, {s.start:%H:%M:%S}–{s.end:%H:%M:%S} UTC",
            reverse("execution-detail", args=[s.id]),
        )
        for s in spans
    ]  # fmt: skip
    failed = sum(1 for s in spans if s.state in trends.FAILED_STATES)
    summary = f"{len(spans)} runs of {job.name} in the last 24 hours"
    summary += f", {failed} of them failed, timed out or abandoned." if spans else "."
    chart = charts.time_lanes(
        "Runs, last 24 hours", [charts.Lane(job.name, bars)], now - timedelta(hours=24), now,
        summary, label_width=120,
    )  # fmt: skip
    return {"chart": chart, "summary": summary}


# --- timeline -----------------------------------------------------------------------


@require_GET
@permission_required("jobs.view_job", raise_exception=True)
def timeline(request):
    return render(request, "jobs/timeline.html", fire_timeline())


def fire_timeline(hours: int = 24) -> dict:
    """The next ``hours`` of fires of every unpaused trigger of every unpaused job, one
    lane per job, and the minutes in which most fires fall (collisions)."""
    triggers = list(
        Trigger.objects.filter(paused=False, next_fire_at__isnull=False, job__paused=False)
        .select_related("job")
        .order_by("next_fire_at", "id")[: TIMELINE_TRIGGERS + 1]
    )
    cut_triggers = len(triggers) > TIMELINE_TRIGGERS
    triggers = triggers[:TIMELINE_TRIGGERS]
    now = database_now()
    end = now + timedelta(hours=hours)
    lanes: dict[int, dict] = {}
    per_minute: dict = {}
    cut_lanes = []
    for trigger in triggers:
        try:
            fires = next_fire_times(trigger, now, TIMELINE_FIRES_PER_TRIGGER + 1)
        except ValueError:
            continue
        fires = [f for f in fires if f <= end]
        if len(fires) > TIMELINE_FIRES_PER_TRIGGER:
            fires = fires[:TIMELINE_FIRES_PER_TRIGGER]
            cut_lanes.append(trigger.job.name)
        lane = lanes.setdefault(trigger.job_id, {"job": trigger.job, "fires": []})
        for when in fires:
            lane["fires"].append((when, trigger))
            minute = when.replace(second=0, microsecond=0)
            per_minute.setdefault(minute, set()).add(trigger.job.name)
    chart_lanes = []
    for lane in lanes.values():
        job = lane["job"]
        spans = [
            charts.Span(when, when, "fire", f"{job.name}: {when:%Y-%m-%d %H:%M:%S} UTC "
                        f"({trigger.describe()})")
            for when, trigger in sorted(lane["fires"], key=lambda f: f[0])
        ]  # fmt: skip
        chart_lanes.append(charts.Lane(job.name, spans, reverse("job-detail", args=[job.pk])))
    busiest = sorted(per_minute.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:BUSIEST_MINUTES]
    busiest = [(minute, sorted(names)) for minute, names in busiest if len(names) > 1]
    fires = sum(len(lane.spans) for lane in chart_lanes)
    jobs = len(chart_lanes)
    summary = f"{fires} fires of {jobs} job{'s' if jobs != 1 else ''} in the next {hours} hours"
    if busiest:
        minute, names = busiest[0]
        summary += f"; the busiest minute, {minute:%Y-%m-%d %H:%M} UTC, has {len(names)} jobs."
    else:
        summary += "; no two jobs fire in the same minute."
    return {
        "chart": charts.time_lanes(f"Fires, next {hours} hours", chart_lanes, now, end, summary)
        if chart_lanes
        else None,
        "summary": summary,
        "busiest": busiest,
        "cut_lanes": cut_lanes,
        "cut_triggers": cut_triggers,
        "fires_per_trigger": TIMELINE_FIRES_PER_TRIGGER,
        "triggers_shown": TIMELINE_TRIGGERS,
        "hours": hours,
    }


def _render(request, page: str, fragment: str, context: dict):
    """The whole page, or only its fragment for htmx (the window switch)."""
    partial = request.htmx and not request.htmx.history_restore_request
    response = render(request, fragment if partial else page, context)
    patch_vary_headers(response, ["HX-Request"])
    return response
