"""The deployment files: Dockerfile and docker-compose.yml, and every command they run.

No docker engine runs where the tests do, so the files are read as data, and each
command the image and the compose file run (the image's build steps that can run here,
its default command, every service's command and health check) runs as a local process
against the test database and a local Redis, changed only where it binds a host or port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from django.db import connection

from locks.models import SchedulerNode
from tests.conftest import ROOT, free_port, test_database_url, wait_for

pytestmark = pytest.mark.deployment

BIN = Path(sys.executable).parent
APP_SERVICES = ["migrate", "web", "node-1", "node-2", "worker"]
NODES = ["node-1", "node-2"]
# What the compose file gives every app service (patterns of the whole value).
COMPOSE_ENV = {
    "DATABASE_URL": r"postgres://.+@postgres:5432/.+",
    "CELERY_BROKER_URL": r"redis://redis:6379/\d+",
    "SECRET_KEY": r".{20,}",
    "ALLOWED_HOSTS": r"127\.0\.0\.1,.*",
    "DEBUG": "0",
}
# The environment of the test runs: the test database, a broker database of our own
# (the Celery tests use database 14).
TEST_BROKER_URL = os.environ.get("TEST_DEPLOYMENT_BROKER_URL", "redis://127.0.0.1:6379/15")


def test_env() -> dict[str, str]:
    return {
        "DATABASE_URL": test_database_url(),
        "CELERY_BROKER_URL": TEST_BROKER_URL,
        "DEBUG": "0",
        "SECRET_KEY": "deployment-test-secret-key",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # The throttle counts (CACHE_REDIS_URL) go to the same local Redis database.
        "CACHE_REDIS_URL": TEST_BROKER_URL,
    }


test_env.__test__ = False  # not a test, despite its name


# --- reading the files -----------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined and comments dropped, as
    docker reads them."""
    instructions, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not (current or line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1]
            continue
        keyword, _, rest = (current + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def instruction(keyword: str) -> str:
    """The arguments of the last ``keyword`` instruction (the one that takes effect)."""
    found = [rest for kw, rest in dockerfile() if kw == keyword]
    assert found, f"the Dockerfile has no {keyword}"
    return found[-1]


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV, with its code directory (/app) mapped to this checkout."""
    env = {}
    for _, rest in filter(lambda i: i[0] == "ENV", dockerfile()):
        env.update(item.split("=", 1) for item in shlex.split(rest))
    return {k: str(ROOT) if v == "/app" else v for k, v in env.items()}


def run_instruction(containing: str) -> tuple[dict[str, str], list[str]]:
    """The RUN that mentions ``containing``: its leading VAR=value words and its argv."""
    [rest] = [rest for kw, rest in dockerfile() if kw == "RUN" and containing in rest]
    words = shlex.split(rest)
    env = {}
    while re.fullmatch(r"[A-Z_]+=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def image_cmd() -> list[str]:
    return json.loads(instruction("CMD"))


def image_healthcheck() -> list[str]:
    _options, _, command = instruction("HEALTHCHECK").partition("CMD ")
    return ["CMD", *json.loads(command)]


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value, variables: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and $$ substitution, over a parsed file."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, default = match.group(1) or match.group(4), match.group(2), match.group(3)
        given = variables.get(name)
        # ${VAR:-x} also replaces an empty value; ${VAR-x} only a missing one.
        if not operator or not (given is None or operator.startswith(":") and not given):
            return given or ""
        assert not operator.endswith("?"), f"compose requires {name}: {default}"
        return default

    return _VARIABLE.sub(substitute, value)


def compose(variables: dict[str, str] | None = None) -> dict:
    """docker-compose.yml as compose sees it, with the given shell variables (none set)."""
    return interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text()), variables or {})


def service(name: str) -> dict:
    return compose()["services"][name]


def command_of(name: str) -> list[str]:
    """The command a service runs: its own, or else the image's."""
    command = service(name).get("command")
    if command is None:
        return image_cmd()
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def seconds(duration: str) -> float:
    """A compose duration ("45s", "1m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


# --- the compose file ------------------------------------------------------------------


def test_it_defines_the_cluster():
    services = compose()["services"]

    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    assert services["postgres"]["image"].split(":")[1] == "15"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert services["redis"]["image"].split(":")[1] == "7"
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert "8000:8000" in services["web"]["ports"]


def test_every_app_service_runs_the_image_built_from_the_dockerfile():
    images = set()
    for name in APP_SERVICES:
        build = service(name)["build"]
        context = build if isinstance(build, str) else build["context"]
        assert (ROOT / context).resolve() == ROOT, name
        assert isinstance(build, str) or build.get("dockerfile", "Dockerfile") == "Dockerfile"
        images.add(service(name).get("image"))

    # One tag for all: built once, and never pulled from a registry under another's name.
    assert len(images) == 1 and None not in images


def test_neither_the_image_nor_compose_registers_the_demo_targets():
    assert "SCHEDULER_DEMO_TARGETS" not in image_env()
    for name in APP_SERVICES:
        assert "SCHEDULER_DEMO_TARGETS" not in service(name).get("environment", {}), name


def test_every_app_service_has_the_environment_it_needs():
    postgres = service("postgres")["environment"]
    for name in APP_SERVICES:
        env = service(name)["environment"]
        for variable, pattern in COMPOSE_ENV.items():
            assert re.fullmatch(pattern, env.get(variable, "")), (name, variable, env.get(variable))
        assert env["SECRET_KEY"] != "dev-only-insecure-secret-key-change-me"
        # The database the postgres service creates, with its user and password.
        url = urllib.parse.urlsplit(env["DATABASE_URL"])
        assert (url.username, url.password, url.path) == (
            postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], f"/{postgres['POSTGRES_DB']}"
        )  # fmt: skip


def test_the_secret_key_and_public_host_names_come_from_the_shell():
    shell = {"SECRET_KEY": "s3cret", "ALLOWED_HOSTS": "scheduler.example.com"}
    env = compose(shell)["services"]["web"]["environment"]

    assert env["SECRET_KEY"] == "s3cret"
    # The health checks call 127.0.0.1, so it stays allowed whatever the operator adds.
    assert env["ALLOWED_HOSTS"].split(",")[:1] == ["127.0.0.1"]
    assert "scheduler.example.com" in env["ALLOWED_HOSTS"].split(",")


def test_services_start_in_order():
    def waits_for(name: str) -> dict[str, str]:
        depends = service(name).get("depends_on", {})
        return {dep: (depends[dep] or {}).get("condition") for dep in depends}

    assert waits_for("migrate") == {"postgres": "service_healthy"}
    assert service("migrate")["restart"] == "no"  # a one-shot: run once, not in a loop
    assert waits_for("web")["migrate"] == "service_completed_successfully"
    for name in [*NODES, "worker"]:
        assert waits_for(name) == {
            "migrate": "service_completed_successfully",
            "redis": "service_healthy",
        }, name


def test_nodes_and_workers_have_time_to_drain_on_stop():
    for name in [*NODES, "worker"]:
        grace = float(service(name)["environment"]["SCHEDULER_SHUTDOWN_GRACE"])
        # Docker's default is 10 s, after which it kills the process mid-run.
        assert seconds(service(name)["stop_grace_period"]) > grace, name


def test_services_other_than_the_web_replace_the_images_health_check():
    # The image checks the web's /healthz; a node or worker would never pass that.
    assert image_healthcheck()[-1].count("127.0.0.1:8000/healthz") == 1
    for name in ["migrate", *NODES, "worker"]:
        check = service(name)["healthcheck"]
        assert check.get("disable") or "8000" not in " ".join(check["test"]), name
    assert "/readyz" in " ".join(service("web")["healthcheck"]["test"])


# --- the Dockerfile --------------------------------------------------------------------


def test_the_image_is_slim_and_runs_as_a_user_without_privileges():
    base = instruction("FROM")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    keywords = [kw for kw, _ in dockerfile()]
    user = instruction("USER")
    assert user not in ("root", "0")
    # Everything after USER (the command above all) runs as that user.
    assert keywords.index("USER") < keywords.index("CMD")


def test_the_image_serves_the_web_with_gunicorn_and_collects_static_files_at_build():
    assert image_cmd()[:2] == ["gunicorn", "controlplane.wsgi"]
    env, argv = run_instruction("collectstatic")
    assert argv == ["python", "manage.py", "collectstatic", "--no-input"]
    assert image_env()["DEBUG"] == "0"


def test_the_image_installs_the_pinned_dependencies_with_gunicorn():
    # The requirements step, run as the build runs it (up to its pip install).
    _, argv = run_instruction("tomllib")
    listing = argv[: argv.index(">")]
    output = subprocess.run(
        [sys.executable, *listing[1:]], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()

    assert any(r.startswith("gunicorn==") for r in output)
    assert any(r.startswith("Django==") for r in output)
    assert all("==" in r for r in output), output
    assert "pip install -r /tmp/requirements.txt" in " ".join(argv)


def test_the_build_context_leaves_local_state_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in [".git", ".venv", ".data", "staticfiles", "tests", ".env"]:
        assert path in ignored, path


# --- every command, run ----------------------------------------------------------------


def localized(argv: list[str], ports: dict[int, int]) -> list[str]:
    """argv with its container ports moved to the given local ports, on 127.0.0.1."""
    result = []
    for arg in argv:
        for inside, local in ports.items():
            arg = re.sub(rf"\b(?:0\.0\.0\.0|127\.0\.0\.1):{inside}\b", f"127.0.0.1:{local}", arg)
            arg = str(local) if arg == str(inside) else arg
        result.append("127.0.0.1" if arg == "0.0.0.0" else arg)
    return result


def executable(argv: list[str]) -> list[str]:
    """The image's python and scripts (on its PATH) are this virtualenv's."""
    program = sys.executable if argv[0] == "python" else str(BIN / argv[0])
    return [program, *argv[1:]]


def service_env(name: str, **extra: str) -> dict[str, str]:
    """What a service's process gets: the image's ENV, the compose file's environment,
    then the test database, broker and settings."""
    env = {**os.environ, **image_env(), **service(name).get("environment", {})}
    env.update(test_env(), **extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


class Process:
    """A command from the deployment files, running here with its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            executable(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, process_group=0,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text()

    def running(self) -> bool:
        assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.log()}"
        return True

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM to the process alone, as docker stop sends it; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                message = f"still running {timeout}s after SIGTERM:\n{self.log()}"
                raise AssertionError(message) from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def start(tmp_path):
    """Start deployment commands; anything still running at the end is killed."""
    processes: list[Process] = []

    def start_process(argv: list[str], env: dict[str, str], label: str) -> Process:
        process = Process(argv, env, tmp_path / f"{label}.log")
        processes.append(process)
        return process

    yield start_process
    for process in processes:
        process.kill()
        process._log.close()


def run(argv: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        executable(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def run_healthcheck(test: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """A compose or Dockerfile health check: ["CMD", argv...] or ["CMD-SHELL", script]."""
    kind, *rest = test
    if kind == "CMD-SHELL":
        return subprocess.run(
            ["/bin/sh", "-c", *rest], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    assert kind == "CMD", test
    return run(rest, env)


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def static_root(tmp_path_factory) -> Path:
    """The image's collectstatic step, run as the build runs it (DEBUG off, placeholder
    database and key), into a directory of this test run's."""
    root = tmp_path_factory.mktemp("staticfiles")
    inline, argv = run_instruction("collectstatic")
    env = {**os.environ, **image_env(), **inline, "STATIC_ROOT": str(root)}
    result = run(argv, env)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


@pytest.mark.django_db(transaction=True)
def test_the_migrate_service_migrates_an_empty_database():
    name = f"{connection.settings_dict['NAME']}_deploy"
    url = f"{test_database_url().rsplit('/', 1)[0]}/{name}"
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        env = service_env("migrate", DATABASE_URL=url)
        result = run(command_of("migrate"), env)
        assert result.returncode == 0, result.stdout + result.stderr

        check = run(["python", "manage.py", "migrate", "--check"], env)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.django_db(transaction=True)
def test_the_web_serves_health_readiness_and_static_files_with_debug_off(start, static_root):
    port = free_port()
    env = service_env("web", STATIC_ROOT=str(static_root))
    web = start(localized(command_of("web"), {8000: port}), env, "web")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: web.running() and answers(f"{base}/healthz"), message="gunicorn up")

    assert get(f"{base}/healthz")[0] == 200
    assert get(f"{base}/readyz")[:1] == (200,)
    status, content_type, body = get(f"{base}/static/controlplane/app.css")
    assert (status, content_type.split(";")[0]) == (200, "text/css")
    assert body == (ROOT / "controlplane/static/controlplane/app.css").read_bytes()
    assert get(f"{base}/static/admin/css/base.css")[0] == 200
    # A page: templates found, {% static %} resolved, with DEBUG off.
    status, _, body = get(f"{base}/login/")
    assert status == 200 and b"/static/controlplane/app.css" in body
    # The API through the shared throttle cache (Redis), and its security headers.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/api/v1/jobs/", timeout=5)
    assert refused.value.code == 401
    assert "script-src 'self'" in refused.value.headers["Content-Security-Policy"]

    for check in [image_healthcheck(), service("web")["healthcheck"]["test"]]:
        result = run_healthcheck(localized(check, {8000: port}), env)
        assert result.returncode == 0, (check, result.stderr)

    assert web.terminate() == 0, web.log()


@pytest.mark.django_db(transaction=True)
def test_each_scheduler_node_registers_serves_metrics_and_drains_on_sigterm(start):
    nodes, ports = {}, {}
    for name in NODES:
        ports[name] = free_port()
        argv = localized(command_of(name), {9101: ports[name]})
        nodes[name] = start(argv, service_env(name), name)

    def registered(name: str) -> bool:
        return nodes[name].running() and SchedulerNode.objects.filter(id=name, state="active")

    for name in NODES:
        wait_for(lambda n=name: registered(n), message=f"{name} registered")
        metrics_url = f"http://127.0.0.1:{ports[name]}/metrics"
        wait_for(lambda url=metrics_url: answers(url), message=f"{name} metrics")
        assert f'scheduler_node_info{{node_id="{name}"' in get(metrics_url)[2].decode()
        check = localized(service(name)["healthcheck"]["test"], {9101: ports[name]})
        result = run_healthcheck(check, service_env(name))
        assert result.returncode == 0, (check, result.stderr)

    for name in NODES:
        assert nodes[name].terminate() == 0, nodes[name].log()
        assert SchedulerNode.objects.get(id=name).state == "stopped"


@pytest.mark.django_db(transaction=True)
def test_the_worker_answers_a_ping_and_stops_on_sigterm(start):
    env = service_env("worker")
    worker = start(command_of("worker"), env, "worker")
    wait_for(lambda: worker.running() and "ready." in worker.log(), message="worker ready")

    # Its health check pings it by name: celery@<the container's hostname, $HOSTNAME>.
    check = service("worker")["healthcheck"]["test"]
    result = run_healthcheck(check, {**env, "HOSTNAME": socket.gethostname()})
    assert result.returncode == 0, (result.stdout, result.stderr, worker.log())
    assert "pong" in result.stdout

    assert worker.terminate() == 0, worker.log()
