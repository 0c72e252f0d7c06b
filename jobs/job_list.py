"""The jobs list at scale: search, filters, sort and pages of one compact line per job,
each with its actions in a menu loaded on demand; and the job-name lookup that feeds the
searchable job pickers (the executions page's job filter).

Every page costs the same handful of queries whatever the number of jobs: the filtered,
sorted page of jobs (with its next fire and last result computed in SQL so the database
can sort and filter on them), a count for the pager, the page's triggers, the page's last
executions and the list of targets for the filter.
"""

from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.db.models import Case, F, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.fields import IntegerField
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from jobs import queries
from jobs.models import Execution, Job, Trigger

JOBS_PER_PAGE = 50
NAMES_LIMIT = 20
FAILED_STATES = (
    Execution.State.FAILED,
    Execution.State.TIMED_OUT,
    Execution.State.ABANDONED,
)

SORTS = {
    "name": "name (A–Z)",
    "-name": "name (Z–A)",
    "next_fire": "next fire (soonest first)",
    "last_result": "last result (failures first, then newest)",
}


class JobListForm(forms.Form):
    """The jobs list's GET parameters; every one is optional and kept across pages."""

    q = forms.CharField(required=False, max_length=200, strip=True, label="Name contains")
    paused = forms.ChoiceField(
        required=False,
        choices=[("", "paused or not"), ("yes", "paused"), ("no", "not paused")],
        label="Paused",
    )
    failing = forms.ChoiceField(
        required=False,
        choices=[("", "any last result"), ("yes", "last run failed"), ("no", "last run ok")],
        label="Last result",
    )
    executor = forms.ChoiceField(
        required=False, choices=[("", "any executor"), *Job.Executor.choices], label="Executor"
    )
    target = forms.CharField(required=False, max_length=200, strip=True, label="Target")
    sort = forms.ChoiceField(required=False, choices=list(SORTS.items()), label="Sort by")
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)


class JobNamesForm(forms.Form):
    q = forms.CharField(required=False, max_length=200, strip=True)


def annotated_jobs() -> QuerySet[Job]:
    """Jobs with ``next_fire_sort`` (earliest next fire of an unpaused trigger; NULL when
    the job is paused), ``last_finished_id`` and ``last_state`` (its latest finished run).

    The last-run subqueries are served by execution_job_recent_idx (job, -created_at): a
    short backward scan per job, run only for the rows a page shows unless a filter or
    the sort needs them for every job.
    """
    next_fire = (
        Trigger.objects.filter(job=OuterRef("pk"), paused=False, next_fire_at__isnull=False)
        .order_by("next_fire_at")
        .values("next_fire_at")[:1]
    )
    last_finished = Execution.objects.filter(
        job=OuterRef("pk"), state__in=Execution.FINAL_STATES
    ).order_by("-created_at")
    return Job.objects.annotate(
        next_fire_sort=Case(When(paused=True, then=Value(None)), default=Subquery(next_fire)),
        last_finished_id=Subquery(last_finished.values("pk")[:1]),
        last_state=Subquery(last_finished.values("state")[:1]),
    )


def filter_jobs(
    q: str = "",
    paused: str = "",
    failing: str = "",
    executor: str = "",
    target: str = "",
    sort: str = "",
) -> QuerySet[Job]:
    """Jobs matching the list's filters (empty ones ignored), in the order asked for."""
    jobs = annotated_jobs()
    if q:
        jobs = jobs.filter(name__icontains=q)
    if paused:
        jobs = jobs.filter(paused=paused == "yes")
    if failing == "yes":
        jobs = jobs.filter(last_state__in=FAILED_STATES)
    elif failing == "no":
        # Never ran counts as not failing (NOT IN alone would drop the NULLs).
        jobs = jobs.filter(Q(last_state__isnull=True) | ~Q(last_state__in=FAILED_STATES))
    if executor:
        jobs = jobs.filter(executor=executor)
    if target:
        # A registered target, or the Celery task a celery job runs instead.
        jobs = jobs.filter(Q(target=target) | Q(celery_task=target))
    if sort == "-name":
        return jobs.order_by("-name")
    if sort == "next_fire":
        return jobs.order_by(F("next_fire_sort").asc(nulls_last=True), "name")
    if sort == "last_result":
        failed_first = Case(
            When(last_state__in=FAILED_STATES, then=Value(0)),
            When(last_state__isnull=False, then=Value(1)),
            default=Value(2),
            output_field=IntegerField(),
        )
        # Execution ids grow with time: the newest last run has the largest id.
        return jobs.order_by(failed_first, F("last_finished_id").desc(nulls_last=True), "name")
    return jobs.order_by("name")


def target_choices() -> list[str]:
    """Every target or Celery task some job uses, for the filter's suggestions."""
    # order_by(): without it the model's ordering by name joins the DISTINCT.
    used = Job.objects.order_by().values_list("target", "celery_task").distinct()
    return sorted({name for pair in used for name in pair if name})


@require_GET
@permission_required("jobs.view_job", raise_exception=True)
@vary_on_headers("HX-Request")
def job_list(request):
    form = JobListForm(request.GET)
    page, jobs = None, []
    if form.is_valid():
        data = form.cleaned_data
        filters = {k: data[k] for k in ("q", "paused", "failing", "executor", "target", "sort")}
        paginator = Paginator(filter_jobs(**filters), JOBS_PER_PAGE)
        page = paginator.get_page(data["page"] or 1)
        jobs = queries.job_rows_of(list(page.object_list))
    context = {
        "form": form,
        "page": page,
        "jobs": jobs,
        "targets": target_choices(),
        "back": request.get_full_path(),
        "filtered": form.is_valid()
        and any(
            form.cleaned_data[k] for k in form.fields if k not in ("sort", "page")
        ),  # fmt: skip
    }
    if _htmx_target(request) == "job-table":
        return render(request, "jobs/_job_table.html", context)
    return render(request, "jobs/job_list.html", context)


@require_GET
@permission_required("jobs.view_job", raise_exception=True)
def job_menu(request, job_id: int):
    """A job row's actions (pause, resume, run now, its triggers), loaded when its menu
    opens; what the user may not do is not offered."""
    (row,) = queries.job_rows_of([get_object_or_404(annotated_jobs(), pk=job_id)])
    back = request.GET.get("back", "")
    if not back.startswith("/") or back.startswith("//"):
        back = ""  # only a path of this site; the actions fall back to the job's page
    return render(request, "jobs/_job_menu.html", {"job": row, "back": back})


@require_GET
@permission_required("jobs.view_job", raise_exception=True)
def job_names(request):
    """Up to NAMES_LIMIT job names containing ``?q=`` (prefix matches first), as the
    ``<option>`` elements of a datalist: the searchable job pickers' suggestions."""
    form = JobNamesForm(request.GET)
    if not form.is_valid():  # too long, or a NUL PostgreSQL cannot compare: no suggestions
        return render(request, "jobs/_job_names.html", {"names": []})
    q = form.cleaned_data["q"]
    jobs = Job.objects.all()
    if q:
        jobs = jobs.filter(name__icontains=q)
    starts = Case(
        When(name__istartswith=q, then=Value(0)), default=Value(1), output_field=IntegerField()
    )
    names = list(jobs.order_by(starts, "name").values_list("pk", "name")[:NAMES_LIMIT])
    return render(request, "jobs/_job_names.html", {"names": names})


def _htmx_target(request) -> str | None:
    """The id of the element an htmx request will swap (None for a plain request or a
    history restore, which wants the whole page)."""
    if not request.htmx or request.htmx.history_restore_request:
        return None
    return (request.htmx.target or "").rpartition("#")[2] or None
