# Production image: the control plane (gunicorn on port 8000, the default command), and,
# with another command, a scheduler node or a Celery worker:
#
#   docker run IMAGE python manage.py migrate                     once per release
#   docker run IMAGE                                              the web
#   docker run IMAGE python manage.py run_scheduler --node-id n1  a scheduler node
#   docker run IMAGE celery -A controlplane worker -Q scheduler   a Celery worker
#
# At run time it needs DATABASE_URL (there is no private PostgreSQL in the image), a real
# SECRET_KEY, ALLOWED_HOSTS and, for nodes and workers, CELERY_BROKER_URL. README.md
# ("Deployment") lists every variable; docker-compose.yml runs the whole cluster.
FROM python:3.11-slim-bookworm

# The code runs from /app, where templates/ and manage.py sit beside the packages
# (settings.BASE_DIR is their parent), so /app is on the path rather than the project
# installed into site-packages. WEB_CONCURRENCY is gunicorn's own variable: its number
# of worker processes. The web is meant to sit behind a proxy that terminates TLS and sets
# X-Forwarded-Proto: HTTPS only (redirect, HSTS for a year, secure cookies). The demo
# targets (SCHEDULER_DEMO_TARGETS) stay off.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    DEBUG=0 \
    WEB_CONCURRENCY=2 \
    SECURE_SSL_REDIRECT=1 \
    SECURE_HSTS_SECONDS=31536000 \
    SECURE_HSTS_INCLUDE_SUBDOMAINS=1 \
    SESSION_COOKIE_SECURE=1 \
    CSRF_COOKIE_SECURE=1 \
    SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto

RUN useradd --system --no-create-home --shell /usr/sbin/nologin --uid 10001 app

WORKDIR /app

# The pinned dependencies (and the prod extra: gunicorn) come from pyproject.toml alone,
# so this layer is rebuilt only when they change, not on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print(*p['dependencies'], *p['optional-dependencies']['prod'], sep=chr(10))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .

# Settings need a DATABASE_URL to load; collectstatic never connects, so a placeholder
# does. WhiteNoise serves the result (STATIC_ROOT, /app/staticfiles) with DEBUG off.
RUN DATABASE_URL=postgres://collectstatic@127.0.0.1/none SECRET_KEY=collectstatic-only \
    python manage.py collectstatic --no-input

# The code and the static files stay root's: the app user can read them, not change them.
USER app
EXPOSE 8000

# Liveness of the web (the default command). A container running another command (a
# node, a worker, a one-shot) must override or disable this: docker-compose.yml does,
# and `docker run --no-healthcheck` does. Keep 127.0.0.1 in ALLOWED_HOSTS for it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# No control socket: it would live in $HOME, which the app user does not have. The worker
# heartbeat files go to /dev/shm: a container's /tmp may sit on a slow overlay disk.
CMD ["gunicorn", "controlplane.wsgi", "--bind", "0.0.0.0:8000", "--access-logfile", "-", \
     "--no-control-socket", "--worker-tmp-dir", "/dev/shm"]
