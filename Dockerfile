# Production image of the control plane, served by gunicorn on port 8000.
#
# The same image runs a scheduler node:  docker run IMAGE python manage.py run_scheduler
# At run time it needs DATABASE_URL (there is no private PostgreSQL in the image), a real
# SECRET_KEY and ALLOWED_HOSTS; README.md lists every variable. Run migrations once per
# release:  docker run IMAGE python manage.py migrate
FROM python:3.11-slim

# The code runs from /app, where templates/ and manage.py sit beside the packages
# (settings.BASE_DIR is their parent); `pip install .` brings the pinned dependencies.
# WEB_CONCURRENCY is gunicorn's own variable: its number of worker processes.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    DEBUG=0 \
    WEB_CONCURRENCY=2

RUN useradd --system --no-create-home --shell /usr/sbin/nologin --uid 10001 app

WORKDIR /app
COPY . .
RUN pip install '.[prod]' \
    && rm -rf build ./*.egg-info

# Settings need a DATABASE_URL to load; collectstatic never connects, so a placeholder does.
RUN DATABASE_URL=postgres://collectstatic@127.0.0.1/none SECRET_KEY=collectstatic-only \
    python manage.py collectstatic --no-input

USER app
EXPOSE 8000
# No control socket: it would live in $HOME, which the app user does not have.
CMD ["gunicorn", "controlplane.wsgi", "--bind", "0.0.0.0:8000", "--access-logfile", "-", \
     "--no-control-socket"]
