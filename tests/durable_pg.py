"""A throwaway PostgreSQL server of a test's own, durable (fsync on), that the test may
restart, stop with ``-m immediate`` or kill outright without disturbing the suite's
database server."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from tests.conftest import ROOT, free_port

SERVER_USER = "postgres"  # PostgreSQL refuses to run as root


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    assert found, "the PostgreSQL server binaries are needed (Debian package postgresql)"
    return Path(found[0]).parent


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *cmd] if os.geteuid() == 0 else cmd


class DurableServer:
    """initdb'd under /var/tmp, listening on 127.0.0.1 only, with PostgreSQL's defaults
    for durability (fsync, synchronous_commit and full_page_writes on)."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="scheduler-durable-", dir="/var/tmp"))
        self.pgdata = self.root / "pg"
        self.log = self.root / "pg.log"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, SERVER_USER)
        os.chmod(self.root, 0o755)
        self._run(
            [
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        )
        self.start()

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        cmd = _as_server_user([str(self.bindir / args[0]), *args[1:]])
        done = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        if check and done.returncode != 0:
            raise AssertionError(f"{args[0]} failed: {done.stdout}{done.stderr}\n{self.tail()}")
        return done

    def tail(self) -> str:
        try:
            return "".join(self.log.read_text().splitlines(keepends=True)[-30:])
        except OSError:
            return ""

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on "
            "-c max_connections=200"
        )
        self._run(
            [
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log),
                "-o",
                options,
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(["pg_ctl", "stop", "-w", "-t", "60", "-D", str(self.pgdata), "-m", mode])

    def restart(self) -> None:
        """A clean restart: every connection is dropped, nothing is lost."""
        self.stop("fast")
        self.start()

    def crash(self) -> None:
        """``kill -9`` the postmaster and its backends, then start again (crash recovery)."""
        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        os.kill(pid, signal.SIGKILL)
        for child in children.stdout.split():
            try:
                os.kill(int(child), signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive([pid, *map(int, children.stdout.split())]):
            time.sleep(0.05)
        self.start()

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(dbname), autocommit=True)

    def setting(self, name: str) -> str:
        with self.connect() as conn:
            return conn.execute("SELECT current_setting(%s)", [name]).fetchone()[0]

    def create_database(self, name: str, template: str | None = None) -> None:
        with self.connect() as conn:
            if template:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            else:
                conn.execute(f'CREATE DATABASE "{name}"')

    def migrate(self, dbname: str) -> None:
        env = {**os.environ, "DATABASE_URL": self.url(dbname)}
        done = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def destroy(self) -> None:
        self._run(["pg_ctl", "stop", "-w", "-D", str(self.pgdata), "-m", "immediate"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            continue
    return False
