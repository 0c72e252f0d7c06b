from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django_prometheus.exports import ExportToDjangoView
from rest_framework.routers import DefaultRouter

from controlplane import api_tokens, favicon, metrics
from controlplane import views as cp
from controlplane.api_docs import SchemaView, docs_view
from jobs import api as jobs_api
from jobs import bulk_views as jobs_bulk
from jobs import job_list, trend_views
from jobs import views as jobs
from locks import api as locks_api
from locks import views as locks

# /metrics serves django-prometheus's registry; the cluster gauges join it here, once.
metrics.register_cluster_collector()

# The REST API: each app registers its own viewsets.
router = DefaultRouter()
jobs_api.register(router)
locks_api.register(router)
api_tokens.register(router)

urlpatterns = [
    path("", cp.overview, name="overview"),
    path("favicon.ico", favicon.favicon, name="favicon"),
    path("healthz", cp.healthz, name="healthz"),
    path("readyz", cp.readyz, name="readyz"),
    path("metrics", ExportToDjangoView, name="metrics"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("audit/", cp.audit_log, name="audit-log"),
    # Trends and the timeline (jobs/trend_views.py).
    path("overview/trends/", trend_views.overview_trends, name="overview-trends"),
    path("jobs/<int:job_id>/trends/", trend_views.job_trends, name="job-trends"),
    path("timeline/", trend_views.timeline, name="timeline"),
    path("tokens/", cp.token_list, name="token-list"),
    path("tokens/<int:token_id>/revoke/", cp.token_revoke, name="token-revoke"),
    # Jobs, triggers and executions (jobs/views.py).
    path("jobs/", job_list.job_list, name="job-list"),
    path("jobs/names/", job_list.job_names, name="job-names"),
    path("jobs/<int:job_id>/menu/", job_list.job_menu, name="job-menu"),
    path("jobs/<int:job_id>/", jobs.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/run/", jobs.job_run, name="job-run"),
    path("jobs/<int:job_id>/pause/", jobs.job_pause, name="job-pause"),
    path("jobs/<int:job_id>/resume/", jobs.job_resume, name="job-resume"),
    path("triggers/<int:trigger_id>/pause/", jobs.trigger_pause, name="trigger-pause"),
    path("triggers/<int:trigger_id>/resume/", jobs.trigger_resume, name="trigger-resume"),
    path("targets/", jobs.target_list, name="target-list"),
    path("targets/help/", jobs.target_help, name="target-help"),
    path("executions/", jobs.execution_list, name="execution-list"),
    path("executions/bulk/", jobs_bulk.execution_bulk, name="execution-bulk"),
    path("executions/<int:execution_id>/", jobs.execution_detail, name="execution-detail"),
    path("executions/<int:execution_id>/rerun/", jobs.execution_rerun, name="execution-rerun"),
    path("executions/<int:execution_id>/cancel/", jobs.execution_cancel, name="execution-cancel"),
    path("executions/<int:execution_id>/log/", jobs.execution_log, name="execution-log"),
    path(
        "executions/<int:execution_id>/log.txt", jobs.execution_log_text, name="execution-log-text"
    ),
    # Locks and nodes (locks/views.py).
    path("locks/", locks.lock_list, name="lock-list"),
    path("locks/cleanup/", locks.lock_cleanup, name="lock-cleanup"),
    path("locks/release/<path:name>", locks.lock_release, name="lock-release"),
    path("nodes/", locks.node_list, name="node-list"),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SchemaView.as_view(), name="api-schema"),
    path("api/docs/", docs_view(), name="api-docs"),
    path("admin/", admin.site.urls),
]

handler400 = "controlplane.views.bad_request"
handler404 = "controlplane.views.page_not_found"
handler500 = "controlplane.views.server_error"
