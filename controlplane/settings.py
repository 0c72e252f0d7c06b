"""Settings for the control plane and the scheduler nodes.

Every setting is an environment variable; README.md lists them with their defaults.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from controlplane.env import env_bool, env_float, env_int, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me"
SECRET_KEY = env_str("SECRET_KEY", DEV_SECRET_KEY)
DEBUG = env_bool("DEBUG", True)
if not DEBUG and SECRET_KEY == DEV_SECRET_KEY:
    raise ImproperlyConfigured(
        "Set SECRET_KEY: the development key must not be used with DEBUG off"
    )
ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "django_prometheus",
    "controlplane",
    "jobs",
    "locks",
]

MIDDLEWARE = [
    # First and last, so the request metrics (/metrics) time and count everything between.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a login, except views marked @login_not_required (health checks)
    # and the API, which answers 401/403 itself.
    "controlplane.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

if not DEBUG:
    # Collected static files (admin, Swagger UI, the dashboard's CSS), served by the app
    # itself in production; with DEBUG on, runserver serves them from the apps.
    MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
                      "whitenoise.middleware.WhiteNoiseMiddleware")  # fmt: skip

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database_url() -> str:
    url = env_str("DATABASE_URL")
    if url:
        return url
    # No DATABASE_URL: development and tests run on a private PostgreSQL under .data/.
    # A failure stops the process with one line saying why, not a traceback.
    from controlplane.devdb import ensure_private_postgres_or_exit

    return ensure_private_postgres_or_exit(BASE_DIR / ".data")


DATABASES = {"default": dj_database_url.parse(_database_url(), conn_max_age=0)}
DATABASES["default"].setdefault("OPTIONS", {})
DATABASES["default"]["OPTIONS"].setdefault("application_name", env_str("APP_NAME", "controlplane"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REST_FRAMEWORK = {
    # Token first, so an anonymous request gets 401 with WWW-Authenticate: Token.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["controlplane.api.RolePermission"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "controlplane.api.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Clustered scheduler API",
    "DESCRIPTION": "Jobs, triggers, executions, locks and scheduler nodes, and the actions "
    "operators take on them. Authenticate with `Authorization: Token <key>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the drf-spectacular-sidecar package's static files: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Two different "state" enums (nodes, executions): name them, or drf-spectacular warns.
    "ENUM_NAME_OVERRIDES": {
        "NodeStateEnum": "locks.models.SchedulerNode.State",
        "ExecutionStateEnum": "jobs.models.Execution.State",
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# Where collectstatic puts the files WhiteNoise serves with DEBUG off (the image:
# /app/staticfiles, collected at build).
STATIC_ROOT = Path(env_str("STATIC_ROOT") or BASE_DIR / "staticfiles")

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# --- Job targets -----------------------------------------------------------------------
# Modules that register job targets, imported at start-up besides the installed apps'
# `targets` modules and the entry points of the group clustered_scheduler.targets
# (jobs/target_modules.py). Comma-separated dotted names.
SCHEDULER_TARGET_MODULES = [
    name.strip() for name in env_str("SCHEDULER_TARGET_MODULES").split(",") if name.strip()
]
for _name in SCHEDULER_TARGET_MODULES:
    if not all(part.isidentifier() for part in _name.split(".")):
        raise ImproperlyConfigured(
            f"SCHEDULER_TARGET_MODULES: {_name!r} is not a dotted module name (e.g. ours.targets)"
        )

# --- Scheduler nodes -------------------------------------------------------------------
# Seconds between a node's heartbeats.
SCHEDULER_HEARTBEAT_INTERVAL = env_float("SCHEDULER_HEARTBEAT_INTERVAL", 5.0, minimum=0.1)
# A node whose last heartbeat is older than this (database time) is dead.
SCHEDULER_NODE_TIMEOUT = env_float("SCHEDULER_NODE_TIMEOUT", 30.0, minimum=0.5)
# Longest an idle node sleeps without asking the database (LISTEN/NOTIFY wakes it sooner).
SCHEDULER_POLL_INTERVAL = env_float("SCHEDULER_POLL_INTERVAL", 30.0, minimum=0.05)
# Triggers (and pending executions) claimed per transaction.
SCHEDULER_BATCH = env_int("SCHEDULER_BATCH", 100, minimum=1)
# Threads of the inline executor.
SCHEDULER_THREADS = env_int("SCHEDULER_THREADS", 8, minimum=1)
# On SIGTERM, how long running work may finish before it is abandoned.
SCHEDULER_SHUTDOWN_GRACE = env_float("SCHEDULER_SHUTDOWN_GRACE", 30.0, minimum=0)
# Missed fire times handled per trigger per claim under `skip` and `fire_all`.
SCHEDULER_MISFIRE_CHUNK = env_int("SCHEDULER_MISFIRE_CHUNK", 100, minimum=1)
# Upper bound on the jitter fraction added to retry backoff.
SCHEDULER_RETRY_JITTER = env_float("SCHEDULER_RETRY_JITTER", 0.2, minimum=0)
# The leader lease: one node runs maintenance; another takes over within this time.
SCHEDULER_LEADER_LEASE = env_float("SCHEDULER_LEADER_LEASE", 15.0, minimum=0.5)
if SCHEDULER_LEADER_LEASE <= 2 * SCHEDULER_HEARTBEAT_INTERVAL:
    # The leader extends its lease on each heartbeat; a shorter lease lapses between them.
    raise ImproperlyConfigured(
        "SCHEDULER_LEADER_LEASE must be more than twice SCHEDULER_HEARTBEAT_INTERVAL"
    )
# How often the leader releases stale locks.
SCHEDULER_STALE_CLEANUP_INTERVAL = env_float("SCHEDULER_STALE_CLEANUP_INTERVAL", 60.0, minimum=1)
# Finished executions older than this many days are deleted by the leader.
SCHEDULER_HISTORY_RETENTION_DAYS = env_int("SCHEDULER_HISTORY_RETENTION_DAYS", 30, minimum=1)
# How often the leader prunes execution history.
SCHEDULER_PRUNE_INTERVAL = env_float("SCHEDULER_PRUNE_INTERVAL", 3600.0, minimum=1)
# Lease of a `forbid` job's lock when the job has no timeout (kept alive while it runs).
SCHEDULER_JOB_LOCK_LEASE = env_float("SCHEDULER_JOB_LOCK_LEASE", 60.0, minimum=1)
# A node's Prometheus endpoint (run_scheduler --metrics-port/--metrics-addr): 0 is off.
SCHEDULER_METRICS_PORT = env_int("SCHEDULER_METRICS_PORT", 0, minimum=0)
SCHEDULER_METRICS_ADDR = env_str("SCHEDULER_METRICS_ADDR", "127.0.0.1")

# --- Celery executor -------------------------------------------------------------------
# Jobs with executor "celery" run on Celery workers; PostgreSQL stays the source of truth
# and messages only say "run execution N". Delivery is at least once (late acks); each
# execution runs once (the worker claims its row first).
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "scheduler")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Worker processes keep their database connection between tasks (Celery's Django fixup
# and Django's CONN_MAX_AGE both close it after every task otherwise: a new connection per
# run). Seconds a worker keeps one; 0 reconnects for every task.
CELERY_WORKER_DB_CONN_MAX_AGE = env_int("CELERY_WORKER_DB_CONN_MAX_AGE", 300, minimum=0)
CELERY_DB_REUSE_MAX = 1000 if CELERY_WORKER_DB_CONN_MAX_AGE else 0
# Seconds between a worker's heartbeats on the execution it runs.
SCHEDULER_EXECUTION_HEARTBEAT = env_float("SCHEDULER_EXECUTION_HEARTBEAT", 5.0, minimum=0.1)
# A worker-run execution whose heartbeat is older than this is abandoned (its worker died).
SCHEDULER_EXECUTION_TIMEOUT = env_float("SCHEDULER_EXECUTION_TIMEOUT", 30.0, minimum=0.5)
# A published execution no worker has claimed after this many seconds is published again
# (a lost message); the worker's claim makes a second delivery harmless.
SCHEDULER_REPUBLISH_AFTER = env_float("SCHEDULER_REPUBLISH_AFTER", 300.0, minimum=1)
if SCHEDULER_EXECUTION_TIMEOUT <= 2 * SCHEDULER_EXECUTION_HEARTBEAT:
    raise ImproperlyConfigured(
        "SCHEDULER_EXECUTION_TIMEOUT must be more than twice SCHEDULER_EXECUTION_HEARTBEAT"
    )
