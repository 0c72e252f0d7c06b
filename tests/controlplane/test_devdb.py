"""The private PostgreSQL: one per checkout, on a port of its own, and one-line errors."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import psycopg
import pytest
from django.db import connection

from controlplane import devdb
from tests.conftest import ROOT

# Under the checkout's own .data/, which the server user can enter (a pytest tmp_path,
# mode 0700, would send the clusters to twin folders under /var/tmp).
SCRATCH = ROOT / ".data" / "devdb-tests"


def run_devdb(command: str, data_dir, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("PRIVATE_PG_PORT", "DATABASE_URL")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "controlplane.devdb", command, "--data-dir", str(data_dir)],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def checkouts():
    """The .data/ folders of two checkouts; their servers are stopped and removed after."""
    base = SCRATCH / str(os.getpid())
    dirs = [base / "checkout-a", base / "checkout-b"]
    yield dirs
    for data_dir in dirs:
        if data_dir.exists():
            run_devdb("stop", data_dir)
            shutil.rmtree(devdb.server_paths(data_dir).data_dir, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_two_checkouts_run_their_servers_at_once_each_on_its_own_remembered_port(checkouts):
    a, b = checkouts
    started = [run_devdb("start", d) for d in (a, b)]
    assert [s.returncode for s in started] == [0, 0], [s.stderr for s in started]
    urls = [s.stdout.strip() for s in started]
    assert port_of(urls[0]) != port_of(urls[1])
    for data_dir, url in zip((a, b), urls, strict=True):
        assert (data_dir / "port").read_text().strip() == str(port_of(url))
        with psycopg.connect(url.replace("postgres://", "postgresql://")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    # Stopped and started again, each comes back on the port it remembered.
    assert run_devdb("stop", a).returncode == 0
    assert run_devdb("status", a).returncode == 3
    assert run_devdb("status", b).returncode == 0
    assert run_devdb("start", a).stdout.strip() == urls[0]
    assert run_devdb("url", b).stdout.strip() == urls[1]


def test_a_remembered_port_taken_by_another_program_is_replaced(checkouts):
    a, _ = checkouts
    first = run_devdb("start", a).stdout.strip()
    assert run_devdb("stop", a).returncode == 0
    with socket.socket() as squatter:
        # The stopped server's connections may linger in TIME_WAIT on that port.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port_of(first)))
        squatter.listen()
        again = run_devdb("start", a)
        assert again.returncode == 0, again.stderr
    assert port_of(again.stdout.strip()) != port_of(first)
    assert (a / "port").read_text().strip() == str(port_of(again.stdout.strip()))


def test_a_port_in_use_given_by_private_pg_port_is_one_line_saying_what_to_do(checkouts):
    a, _ = checkouts
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        result = run_devdb("start", a, PRIVATE_PG_PORT=str(taken))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert f"Port {taken}" in result.stderr and "unset PRIVATE_PG_PORT" in result.stderr


@pytest.mark.django_db
def test_a_devdb_failure_at_django_start_up_is_one_line(tmp_path):
    if os.environ.get("DATABASE_URL"):
        pytest.skip("runs on DATABASE_URL, not on the private server")
    running = int(connection.settings_dict["PORT"])
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environ["PRIVATE_PG_PORT"] = str(running + 1)
    for command in (["manage.py", "check"], ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                                             "tests/jobs/test_load_demo.py"]):  # fmt: skip
        result = subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=environ, capture_output=True, text=True
        )
        assert result.returncode != 0
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert lines == [
            f"devdb: The private PostgreSQL in {devdb.server_paths(ROOT / '.data').pgdata} is "
            f"running on port {running}, but PRIVATE_PG_PORT asks for {running + 1}: unset "
            "PRIVATE_PG_PORT, or stop the server first (make db-stop)."
        ]
