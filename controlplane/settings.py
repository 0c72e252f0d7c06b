"""Settings for the control plane and the scheduler nodes.

Every setting is an environment variable; README.md lists them with their defaults.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from controlplane.env import env_bool, env_float, env_int, env_list, env_rate, env_str

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
    # TrigramExtension and the GIN indexes behind the executions list's text search.
    "django.contrib.postgres",
    "rest_framework",
    # Hashed API tokens: knox's hashing and authentication, with our token model
    # (controlplane.ApiToken: named, with last use). Its own AuthToken is swapped out.
    "knox",
    "axes",
    "csp",
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
    # A NUL byte in the path, the query or a form body is a 400 before any view reads it.
    "controlplane.middleware.RejectNulMiddleware",
    "csp.middleware.CSPMiddleware",
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
    # Last before the metrics: turns a login refused for a lockout into the lockout page.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

AUTHENTICATION_BACKENDS = [
    # First: refuses any login attempt while its user or address is locked out.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
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
                "csp.context_processors.nonce",
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
# No JIT: the dashboard's aggregates over millions of rows are estimated as costly enough to
# compile, and compiling took ~230 ms of a 250 ms page (the query itself: 16 ms) at 10M
# executions. The scheduler's own statements never gain from it either.
DATABASES["default"]["OPTIONS"].setdefault("options", "-c jit=off")
# Server-side prepared statements for what the scheduler runs again and again (the
# statements of jobs/claims.py, which bind server side; Django's own queries bind client
# side and are never prepared): a statement run this many times on a connection is
# prepared. Planning the worker's claim and result took as long as running them. 0 turns
# it off, for a pooler in transaction mode without prepared statement support.
_prepare_threshold = env_int("DATABASE_PREPARE_THRESHOLD", 5, minimum=0)
DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", _prepare_threshold or None)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- The REST API ----------------------------------------------------------------------
# Requests per client per period (DRF's "N/s", "N/min", "N/hour" or "N/day").
API_THROTTLE_ANON = env_rate("API_THROTTLE_ANON", "60/min")
API_THROTTLE_USER = env_rate("API_THROTTLE_USER", "1200/min")
# Failed token authentications per client address: past it, 429 until the period ends.
API_THROTTLE_AUTH_FAILURES = env_rate("API_THROTTLE_AUTH_FAILURES", "10/min")
# Proxies in front of the web that append to X-Forwarded-For; 0: use the peer address.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0)

REST_FRAMEWORK = {
    # Token first, so an anonymous request gets 401 with WWW-Authenticate: Token.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "controlplane.tokens.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["controlplane.api.RolePermission"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "controlplane.api.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["controlplane.api.BoundedJSONParser"],
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": API_THROTTLE_ANON,
        "user": API_THROTTLE_USER,
        "auth_failures": API_THROTTLE_AUTH_FAILURES,
    },
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
}

KNOX_TOKEN_MODEL = "controlplane.ApiToken"
REST_KNOX = {
    "TOKEN_MODEL": KNOX_TOKEN_MODEL,
    # Expiry is chosen per token (or none); knox's default of 10 hours does not apply.
    "TOKEN_TTL": None,
    "AUTH_HEADER_PREFIX": "Token",
}
# knox's own token table would never be used: its model is swapped for ApiToken.
MIGRATION_MODULES = {"knox": None}

# Throttle counters and the like. Without CACHE_REDIS_URL each web process counts on its
# own (so N processes allow N times the rates); with it, all share one count.
CACHE_REDIS_URL = env_str("CACHE_REDIS_URL")
if CACHE_REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_REDIS_URL,
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# /api/schema/ and /api/docs/ answer anonymous users too (default: a login is needed).
API_DOCS_PUBLIC = env_bool("API_DOCS_PUBLIC", False)

SPECTACULAR_SETTINGS = {
    "TITLE": "Clustered scheduler API",
    "DESCRIPTION": "Jobs, triggers, executions, locks and scheduler nodes, and the actions "
    "operators take on them. Authenticate with `Authorization: Token <key>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and the docs need a login unless API_DOCS_PUBLIC.
    "SERVE_PERMISSIONS": [
        "rest_framework.permissions.AllowAny"
        if API_DOCS_PUBLIC
        else "rest_framework.permissions.IsAuthenticated"
    ],
    # Swagger UI from the drf-spectacular-sidecar package's static files: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Two different "state" enums (nodes, executions) and "kind" enums (triggers, timeline
    # entries): name them, or drf-spectacular warns.
    "ENUM_NAME_OVERRIDES": {
        "NodeStateEnum": "locks.models.SchedulerNode.State",
        "ExecutionStateEnum": "jobs.models.Execution.State",
        "TriggerKindEnum": "jobs.models.Trigger.Kind",
        "TimelineKindEnum": "jobs.timeline.KINDS",
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
# Dates and times with seconds and zone in the admin ("2026-12-04 14:00:55 UTC").
FORMAT_MODULE_PATH = ["controlplane.formats"]

STATIC_URL = "static/"
# Where collectstatic puts the files WhiteNoise serves with DEBUG off (the image:
# /app/staticfiles, collected at build).
STATIC_ROOT = Path(env_str("STATIC_ROOT") or BASE_DIR / "staticfiles")

# --- Request bounds ----------------------------------------------------------------------
# Largest request body (bytes) a view reads; the API answers 413 past it.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 1_048_576, minimum=65_536)
# A job's args and kwargs, each: bytes as compact JSON, and nesting depth.
SCHEDULER_ARGS_MAX_BYTES = env_int("SCHEDULER_ARGS_MAX_BYTES", 65_536, minimum=64)
SCHEDULER_ARGS_MAX_DEPTH = env_int("SCHEDULER_ARGS_MAX_DEPTH", 20, minimum=1)
# Any JSON body to the API: deeper nesting is refused before a serializer sees it.
API_JSON_MAX_DEPTH = max(100, SCHEDULER_ARGS_MAX_DEPTH + 5)

# --- Job targets and secrets -------------------------------------------------------------
# The demo targets (jobs/demo_targets.py; one of them writes files): for `make run` and
# the tests, never for production. The Docker image leaves this off.
SCHEDULER_DEMO_TARGETS = env_bool("SCHEDULER_DEMO_TARGETS", False)
# {"$secret": "NAME"} in a job's arguments reads the environment variable PREFIX + NAME
# of the node or worker that runs it; the prefix keeps jobs away from the process's own
# settings (SECRET_KEY, DATABASE_URL).
SCHEDULER_SECRET_ENV_PREFIX = env_str("SCHEDULER_SECRET_ENV_PREFIX", "SCHEDULER_SECRET_")
if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", SCHEDULER_SECRET_ENV_PREFIX):
    raise ImproperlyConfigured(
        "SCHEDULER_SECRET_ENV_PREFIX must be a non-empty environment variable name prefix"
    )
# Argument values under keys matching this (case-insensitive, anywhere in the key) show
# as •••• to every role below admin: pages, API, audit log, logs.
SCHEDULER_REDACT_KEYS = env_str(
    "SCHEDULER_REDACT_KEYS", "password|secret|token|api_key|credential|private"
)
try:
    re.compile(SCHEDULER_REDACT_KEYS)
except re.error as e:
    raise ImproperlyConfigured(f"SCHEDULER_REDACT_KEYS is not a regular expression: {e}") from None

# --- Login protection (django-axes) ------------------------------------------------------
# After LOGIN_FAILURE_LIMIT failed logins for one username, or from one address, further
# attempts are refused (429) for LOGIN_COOLOFF_MINUTES; each lockout is audited.
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("LOGIN_COOLOFF_MINUTES", 15.0, minimum=0.1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_CLIENT_IP_CALLABLE = "controlplane.security.client_ip"
AXES_VERBOSE = False

# --- HTTPS and security headers ----------------------------------------------------------
# Off by default for development over plain HTTP; the Docker image turns them on.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Probes and Prometheus ask over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
# Behind a TLS-terminating proxy: the header it sets to "https", e.g. X-Forwarded-Proto.
# Only when the proxy always sets it and nothing reaches the web around the proxy.
_PROXY_SSL_HEADER = env_str("SECURE_PROXY_SSL_HEADER")
if _PROXY_SSL_HEADER:
    if not re.fullmatch(r"[A-Za-z0-9-]+", _PROXY_SSL_HEADER):
        raise ImproperlyConfigured(f"SECURE_PROXY_SSL_HEADER={_PROXY_SSL_HEADER!r} is not a header")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_"), "https")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Preloading binds the whole registered domain and its subdomains: a decision for the
# domain's owner, not a default of this image. Without it Django warns (W021).
if not SECURE_HSTS_PRELOAD:
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
# Only the site's own scripts, styles and images (data: for the icons of Swagger UI's
# stylesheet): no inline code, no other origin. Every page works under it; the browser
# tests check that no page violates it.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Secret-looking values in dict and list log arguments are masked (the redaction of
    # the dashboard and the API).
    "filters": {"redact": {"()": "controlplane.redaction.RedactingFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # django-axes logs every successful login at INFO; lockouts come as warnings.
    "loggers": {"axes": {"level": "WARNING"}},
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
# A node claims inline runs for its free threads, plus at most this many more: as many as
# it expects to start within SCHEDULER_PREFETCH_WAIT seconds, judging by how long its
# recent runs took (quick runs: two batches, one for each of the node's two claims that
# can be in flight while it drains a backlog; slow runs: none). 0: free threads only.
SCHEDULER_PREFETCH = env_int("SCHEDULER_PREFETCH", 200, minimum=0)
SCHEDULER_PREFETCH_WAIT = env_float("SCHEDULER_PREFETCH_WAIT", 0.02, minimum=0)
# Prefetched runs the node expects to start within this many seconds (at most
# SCHEDULER_PREFETCH_WAIT) are recorded running by the claim, which confirms their start,
# instead of dispatched and confirmed by a second write when a thread takes them. If the
# node dies before it starts them they are abandoned (recovered if the job asks), where a
# dispatched run would go back to pending. 0: only runs for free threads.
SCHEDULER_START_WINDOW = env_float("SCHEDULER_START_WINDOW", 0.02, minimum=0)
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
# The run rollup behind the dashboard's trends: its per-minute rows (the 24-hour counts
# need a day of them) and its per-hour rows (the 7-day trends need a week), pruned with
# the history but kept for their own time, which may outlast the executions.
SCHEDULER_ROLLUP_MINUTE_RETENTION_HOURS = env_int(
    "SCHEDULER_ROLLUP_MINUTE_RETENTION_HOURS", 48, minimum=26
)
SCHEDULER_ROLLUP_RETENTION_DAYS = env_int("SCHEDULER_ROLLUP_RETENTION_DAYS", 90, minimum=8)
# How often the leader prunes execution history.
SCHEDULER_PRUNE_INTERVAL = env_float("SCHEDULER_PRUNE_INTERVAL", 3600.0, minimum=1)
# Lease of a `forbid` job's lock when the job has no timeout (kept alive while it runs).
SCHEDULER_JOB_LOCK_LEASE = env_float("SCHEDULER_JOB_LOCK_LEASE", 60.0, minimum=1)
# Most bytes of output (logging and print) kept per execution; past it a marker line.
SCHEDULER_LOG_LIMIT = env_int("SCHEDULER_LOG_LIMIT", 1024 * 1024, minimum=1024)
# Largest return value kept per execution, as JSON bytes; a larger one leaves a note.
SCHEDULER_RESULT_LIMIT = env_int("SCHEDULER_RESULT_LIMIT", 64 * 1024, minimum=0)
# Seconds a running job has to stop after a cancel request before it is recorded
# cancelled anyway (its late result refused; a Celery worker's process is terminated).
SCHEDULER_CANCEL_GRACE = env_float("SCHEDULER_CANCEL_GRACE", 30.0, minimum=0)
# Most executions one bulk rerun or cancel may act on; more matches are refused.
SCHEDULER_BULK_LIMIT = env_int("SCHEDULER_BULK_LIMIT", 10_000, minimum=1)
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
