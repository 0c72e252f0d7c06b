from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent

# The tests run the demo targets (jobs/demo_targets.py), which only SCHEDULER_DEMO_TARGETS=1
# registers. `make test` sets it before Django starts; a bare `pytest` gets it here, for
# this process (pytest-django set Django up already, so the module is imported by hand)
# and for every node, worker and server process the tests start.
os.environ["SCHEDULER_DEMO_TARGETS"] = "1"
import jobs.demo_targets  # noqa: E402, F401

# Scheduler nodes in tests heartbeat often and are declared dead quickly.
FAST_NODE_ENV = {
    "SCHEDULER_HEARTBEAT_INTERVAL": "0.5",
    "SCHEDULER_NODE_TIMEOUT": "3",
    "SCHEDULER_POLL_INTERVAL": "2",
    "SCHEDULER_SHUTDOWN_GRACE": "10",
    "SCHEDULER_LEADER_LEASE": "2",
    "LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="session")
def django_db_modify_db_settings():
    """Give each pytest run its own test database, so concurrent runs never collide."""
    from django.conf import settings

    for db in settings.DATABASES.values():
        test = db.setdefault("TEST", {})
        test["NAME"] = f"{test.get('NAME') or 'test_' + db['NAME']}_{os.getpid()}"


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range (32768 and up), so no
    outgoing connection takes it between this check and the bind."""
    for port in random.sample(range(20000, 32000), 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port between 20000 and 32000")


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, message: str = ""):
    """Poll until ``predicate()`` is truthy; fail with ``message`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {message or predicate}")
        time.sleep(interval)


def test_database_url() -> str:
    s = connection.settings_dict
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    user = s.get("USER") or "postgres"
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{s['NAME']}"


test_database_url.__test__ = False  # not a test, despite its name


class NodeProcess:
    """A real `manage.py run_scheduler` process against the test database."""

    def __init__(self, node_id: str, log_dir: Path, extra_env=None, prefix=(), args=()):
        self.node_id = node_id
        self.log_path = log_dir / f"{node_id}.log"
        env = {**os.environ, **FAST_NODE_ENV, "DATABASE_URL": test_database_url()}
        env["APP_NAME"] = f"node:{node_id}"
        env.update(extra_env or {})
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "manage.py", "run_scheduler", "--node-id", node_id, *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def start_node(transactional_db, tmp_path):
    """Start scheduler node processes; each is stopped (SIGTERM) at the end of the test."""
    nodes: list[NodeProcess] = []

    def start(node_id: str, **kwargs) -> NodeProcess:
        node = NodeProcess(node_id, tmp_path, **kwargs)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.terminate()


ROLE_USERNAMES = {"viewer": "vera", "operator": "otto", "admin": "ada"}


@pytest.fixture
def role_users(db):
    """One user per role (viewer, operator, admin), by role name; password "pw"."""
    from django.contrib.auth.models import Group, Permission, User

    from controlplane.roles import sync_roles

    # Transactional tests truncate every table, the migration's groups included.
    sync_roles(Group, Permission)
    users = {}
    for role, username in ROLE_USERNAMES.items():
        user = User.objects.create_user(username, password="pw", is_staff=role != "viewer")
        user.groups.add(Group.objects.get(name=role))
        users[role] = user
    return users


@pytest.fixture
def client_for(role_users):
    """client_for("operator") -> a test client logged in as that role (None: anonymous)."""
    from django.test import Client

    def make(role: str | None) -> Client:
        client = Client()
        if role is not None:
            client.force_login(role_users[role])
        return client

    return make


def make_api_key(user, name: str | None = None, expires_in_days: int | None = None) -> str:
    """A new API token of ``user``; returns its key (stored only as a hash). Not audited
    (controlplane.tokens.create_token is), so tests can count their own audit entries."""
    from datetime import timedelta

    from controlplane.models import ApiToken

    expiry = None if expires_in_days is None else timedelta(days=expires_in_days)
    name = name or f"test-{ApiToken.objects.filter(user=user).count() + 1}"
    return ApiToken.objects.create(user, expiry=expiry, name=name)[1]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The default hasher costs ~0.2 s per user; tests create a few users each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_throttles():
    # API throttles count in the cache (per process here): each test starts from zero.
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()
