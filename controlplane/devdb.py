"""A private PostgreSQL server for development and tests, kept under `.data/`.

With no DATABASE_URL, settings.py calls `ensure_private_postgres_or_exit(BASE_DIR / ".data")` on
every start of every process, so the common case (server already up) must cost one
connection attempt and nothing else. The first call initialises a cluster with the
PostgreSQL binaries it finds (PATH, then /usr/lib/postgresql/*/bin, newest first) or, when
none are installed, with the binaries shipped in the `pgserver` wheel from PyPI.

Each checkout has its own server on its own port, so that several checkouts on one
machine never collide: PRIVATE_PG_PORT if set, else the port remembered in `.data/port`,
chosen at the first start among the free ones (and chosen again should another program
have taken it while the server was down). Every failure is a DevDBError whose message is
one line saying what to do; the logs it names hold the details.

PostgreSQL refuses to run as root; as root the server runs as the `postgres` system user.

This module must not import Django: it runs before settings exist.

    python -m controlplane.devdb start|stop|status|url [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "scheduler"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
# Where a checkout's port is chosen: hashed from its path, then the next free one.
PORT_RANGE = range(54330, 55000)
SERVER_USER = "postgres"  # the system account the server runs as when we are root

# Used only when no PostgreSQL is installed; its wheel ships relocatable binaries.
PGSERVER_REQUIREMENT = "pgserver==0.1.4"
SYSTEM_BINDIR_GLOB = "/usr/lib/postgresql/*/bin"

START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; PostgreSQL appends "/.s.PGSQL.NNNNN"


class DevDBError(RuntimeError):
    """The private server could not be started; the message says why and what to do."""


@dataclass(frozen=True)
class Paths:
    data_dir: Path  # where the cluster lives
    home: Path  # the checkout's .data/: the same folder, or the one naming a twin

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pg"

    @property
    def log(self) -> Path:
        return self.data_dir / "pg.log"

    @property
    def sockets(self) -> Path:
        return self.data_dir / "run"

    @property
    def lock(self) -> Path:
        return self.data_dir / "devdb.lock"

    @property
    def port_file(self) -> Path:
        return self.home / "port"


def server_paths(data_dir: Path) -> Paths:
    """Where the cluster lives: under data_dir, or in a twin folder the server can reach.

    As root the server runs as the postgres user, which cannot enter a checkout below
    a 0700 folder (a clone under /root, say). Then the cluster goes to a folder of its
    own under /var/tmp, named after the checkout; data_dir/server-dir remembers it.
    """
    data_dir = Path(data_dir).resolve()
    marker = data_dir / "server-dir"
    try:
        return Paths(Path(marker.read_text().strip()), data_dir)
    except OSError:
        pass
    user = _server_user() if os.geteuid() == 0 else None
    if user is None:
        return Paths(data_dir, data_dir)
    # Created first: a folder that does not exist yet cannot be entered by anyone.
    data_dir.mkdir(parents=True, exist_ok=True)
    if _traversable(data_dir, user):
        return Paths(data_dir, data_dir)
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    twin = Path("/var/tmp") / f"scheduler-devdb-{digest}"
    twin.mkdir(mode=0o755, exist_ok=True)
    marker.write_text(f"{twin}\n")
    return Paths(twin, data_dir)


def _traversable(data_dir: Path, user: pwd.struct_passwd) -> bool:
    for path in [*reversed(data_dir.parents)]:
        if subprocess.run(["test", "-x", str(path)], **_as_user(user)).returncode != 0:
            return False
    return True


def port_from_env() -> int | None:
    raw = os.environ.get("PRIVATE_PG_PORT", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise DevDBError(f"PRIVATE_PG_PORT={raw!r} is not a TCP port number")
    return int(raw)


def remembered_port(paths: Paths) -> int | None:
    try:
        raw = paths.port_file.read_text().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() and 1 <= int(raw) <= 65535 else None


def current_port(paths: Paths) -> int | None:
    """The port this checkout's server uses, without choosing one: None if not known yet."""
    return port_from_env() or _running_port(paths) or remembered_port(paths)


def _choose_port(paths: Paths) -> int:
    """A free port for a server that is not running, remembered in `.data/port`.

    Called under the data directory's lock. Starting from a port hashed from the
    checkout's path, two checkouts rarely even try the same one; if they do, the second
    to start finds it taken and moves on.
    """
    remembered = remembered_port(paths)
    if remembered is not None and _port_is_free(remembered):
        return remembered
    digest = int(hashlib.sha1(str(paths.data_dir).encode()).hexdigest(), 16)
    first = digest % len(PORT_RANGE)
    for offset in range(len(PORT_RANGE)):
        port = PORT_RANGE[(first + offset) % len(PORT_RANGE)]
        if port != remembered and _port_is_free(port):
            paths.port_file.write_text(f"{port}\n")
            return port
    raise DevDBError(
        f"No free port between {PORT_RANGE.start} and {PORT_RANGE.stop - 1} on {HOST} for "
        "the private PostgreSQL: set PRIVATE_PG_PORT, or DATABASE_URL to a server you run."
    )


def fast_mode() -> bool:
    return os.environ.get("PRIVATE_PG_FAST", "").strip().lower() in {"1", "true", "yes", "on"}


def database_url(port: int) -> str:
    return f"postgres://{SUPERUSER}@{HOST}:{port}/{DB_NAME}"


def ensure_private_postgres_or_exit(data_dir: Path) -> str:
    """ensure_private_postgres for entry points: a failure exits with its one line."""
    try:
        return ensure_private_postgres(data_dir)
    except DevDBError as exc:
        raise SystemExit(f"devdb: {exc}") from None


def ensure_private_postgres(data_dir: Path) -> str:
    """Start the private server under `data_dir` unless it runs, and return its URL.

    Safe to call from many processes at once: the slow path runs under a file lock, and
    each caller re-checks once it holds it.
    """
    paths = server_paths(Path(data_dir))
    wanted = port_from_env()
    running = _running_port(paths)
    if running is not None and wanted in (None, running) and _can_connect(running, DB_NAME):
        return database_url(running)

    paths.data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(paths):
        running = _running_port(paths)
        if running is not None and wanted not in (None, running):
            raise DevDBError(
                f"The private PostgreSQL in {paths.pgdata} is running on port {running}, "
                f"but PRIVATE_PG_PORT asks for {wanted}: unset PRIVATE_PG_PORT, or stop the "
                "server first (make db-stop)."
            )
        port = running or wanted
        if running is None:
            if wanted is None:
                port = _choose_port(paths)
            else:
                _check_port_free(wanted)
            bindir = find_bindir(_cluster_version(paths))
            server_user = _server_user()
            _prepare_dirs(paths, server_user)
            _initdb_once(paths, bindir, server_user)
            _remove_stale_lockfiles(paths)
            _start(paths, bindir, server_user, port)
        import psycopg

        try:
            _create_database(port)
        except psycopg.Error as exc:
            raise DevDBError(
                f"The private PostgreSQL ({paths.pgdata}) does not accept connections on "
                f"{HOST}:{port}: {_one_line(str(exc))} (log: {paths.log})"
            ) from exc
        if wanted is None:
            paths.port_file.write_text(f"{port}\n")
    return database_url(port)


def stop_private_postgres(data_dir: Path) -> bool:
    """Stop the server (fast shutdown: sessions are disconnected). False if not running."""
    paths = server_paths(Path(data_dir))
    if _running_port(paths) is None:
        return False
    bindir = find_bindir(_cluster_version(paths), install=False)
    with _locked(paths):
        _run(
            [bindir / "pg_ctl", "-D", paths.pgdata, "-m", "fast", "-w", "-t", "60", "stop"],
            _server_user(),
            paths,
            "pg_ctl stop",
        )
    return True


# --- Finding binaries ----------------------------------------------------------------


def find_bindir(cluster_version: str | None = None, install: bool = True) -> Path:
    """The directory holding pg_ctl, initdb and postgres.

    PRIVATE_PG_BINDIR wins; then pg_ctl on PATH (resolved through symlinks, as Debian's
    /usr/local/bin/pg_ctl points into /usr/lib/postgresql/N/bin); then the newest
    /usr/lib/postgresql/N/bin; then the pgserver wheel, pip-installed on first need.
    For an existing cluster, binaries of its major version come first.
    """
    explicit = os.environ.get("PRIVATE_PG_BINDIR", "").strip()
    if explicit:
        if not _is_bindir(Path(explicit)):
            raise DevDBError(
                f"PRIVATE_PG_BINDIR={explicit} has no pg_ctl, initdb and postgres in it"
            )
        return Path(explicit)
    candidates = [d for d in [*_system_bindirs(), _pgserver_bindir()] if d and _is_bindir(d)]
    if cluster_version is not None:
        for candidate in candidates:
            if _major_version(candidate) == cluster_version:
                return candidate
    if candidates:
        return candidates[0]
    if not install:
        raise DevDBError("No PostgreSQL binaries found")
    return _install_pgserver()


def _system_bindirs() -> list[Path]:
    found = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        found.append(Path(os.path.realpath(on_path)).parent)

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", p.parent.name)) or (0,)

    found += sorted((Path(p) for p in glob.glob(SYSTEM_BINDIR_GLOB)), key=version, reverse=True)
    return found


def _is_bindir(path: Path) -> bool:
    return all(os.access(path / exe, os.X_OK) for exe in ("pg_ctl", "initdb", "postgres"))


def _pgserver_bindir() -> Path | None:
    # Located through the installed distribution's files: importing pgserver would pull
    # in its own server management, which we do not use (nor install: see --no-deps).
    from importlib import metadata

    try:
        dist = metadata.distribution("pgserver")
    except metadata.PackageNotFoundError:
        return None
    bindir = Path(str(dist.locate_file("pgserver/pginstall/bin")))
    return bindir if _is_bindir(bindir) else None


def _install_pgserver() -> Path:
    print(
        f"devdb: no PostgreSQL installed; installing {PGSERVER_REQUIREMENT} "
        f"(a PostgreSQL build on PyPI) into {sys.prefix}",
        file=sys.stderr,
    )
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", PGSERVER_REQUIREMENT]
    result = subprocess.run(cmd, capture_output=True, text=True)
    bindir = _pgserver_bindir() if result.returncode == 0 else None
    if bindir is None:
        raise DevDBError(
            "No PostgreSQL binaries were found (pg_ctl on PATH or under "
            f"{SYSTEM_BINDIR_GLOB}) and installing {PGSERVER_REQUIREMENT} failed "
            f"({_last_line(result.stdout + result.stderr)}): install PostgreSQL "
            "(Debian: apt-get install postgresql-15), or set DATABASE_URL to a server you run."
        )
    return bindir


def _major_version(bindir: Path) -> str:
    out = subprocess.run(
        [bindir / "pg_ctl", "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"(\d+)", out)
    return match.group(1) if match else "?"


# --- State of the server --------------------------------------------------------------


def _running_port(paths: Paths) -> int | None:
    """The port of a live postmaster for this data directory, from its postmaster.pid.

    The file's lines are: pid, data dir, start time, port, socket dir, listen address,
    shared memory key, status. A file left behind by a crashed server names a dead pid.
    """
    pidfile = _read_pidfile(paths)
    if pidfile is None or not _is_postgres_process(pidfile[0]):
        return None
    return pidfile[1]


def _read_pidfile(paths: Paths) -> tuple[int, int] | None:
    try:
        lines = (paths.pgdata / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None


def _lockfile_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _is_postgres_process(pid: int) -> bool:
    if not Path("/proc/self/stat").exists():  # no procfs (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, owned by another user
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    return name == "postgres" and state not in "ZX"  # Z: a zombie, dead but not reaped


def _remove_stale_lockfiles(paths: Paths) -> None:
    # PostgreSQL only asks whether the pid in its lock files exists, so an unreaped zombie,
    # or a pid reused by another program after a reboot, would keep it from ever starting.
    for lockfile in [paths.pgdata / "postmaster.pid", *paths.sockets.glob(".s.PGSQL.*.lock")]:
        pid = _lockfile_pid(lockfile)
        if pid is not None and not _is_postgres_process(pid):
            lockfile.unlink(missing_ok=True)


def _can_connect(port: int, dbname: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(_conninfo(port, dbname), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _conninfo(port: int, dbname: str) -> str:
    return f"host={HOST} port={port} user={SUPERUSER} dbname={dbname}"


# --- Starting --------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(paths: Paths) -> Iterator[None]:
    with open(paths.lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _server_user() -> pwd.struct_passwd | None:
    """None: run the server as ourselves. As root: the postgres system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise DevDBError(
            f"PostgreSQL will not run as root, and there is no '{SERVER_USER}' user to run "
            f"it as. Create one (useradd --system {SERVER_USER}), run as another user, "
            "or set DATABASE_URL."
        ) from None


def _prepare_dirs(paths: Paths, user: pwd.struct_passwd | None) -> None:
    paths.sockets.mkdir(exist_ok=True)
    paths.log.touch(exist_ok=True)
    if user is None:
        return
    _check_traversable(paths.data_dir, user)
    for path in (paths.sockets, paths.log):
        os.chown(path, user.pw_uid, user.pw_gid)
    if paths.pgdata.exists() and paths.pgdata.stat().st_uid != user.pw_uid:
        owner = paths.pgdata.stat().st_uid
        raise DevDBError(
            f"{paths.pgdata} belongs to uid {owner}, but as root the server runs as "
            f"'{user.pw_name}'. Run as the owner, or remove {paths.data_dir} to start afresh."
        )


def _check_traversable(data_dir: Path, user: pwd.struct_passwd) -> None:
    # The server user must reach data_dir through every parent; a 0700 home directory
    # above the checkout is the usual culprit.
    for path in [*reversed(data_dir.parents), data_dir]:
        ok = subprocess.run(["test", "-x", str(path)], **_as_user(user)).returncode == 0
        if not ok:
            raise DevDBError(
                f"PostgreSQL runs as the '{user.pw_name}' user (it refuses root), and that "
                f"user cannot enter {path}. Allow it (chmod o+x {path}), move the "
                "checkout somewhere it can reach, or set DATABASE_URL."
            )


def _cluster_version(paths: Paths) -> str | None:
    try:
        return (paths.pgdata / "PG_VERSION").read_text().strip()
    except OSError:
        return None


def _initdb_once(paths: Paths, bindir: Path, user: pwd.struct_passwd | None) -> None:
    have = _cluster_version(paths)
    if have is not None:
        want = _major_version(bindir)
        if have != want:
            raise DevDBError(
                f"{paths.pgdata} was initialised by PostgreSQL {have}, but the binaries "
                f"found are PostgreSQL {want} ({bindir}). Install PostgreSQL {have}, set "
                f"PRIVATE_PG_BINDIR, or remove {paths.data_dir} (make clean) to start afresh."
            )
        return
    if paths.pgdata.exists():
        # Left by an initdb that was killed halfway: nothing in it is worth keeping.
        shutil.rmtree(paths.pgdata)
    paths.pgdata.mkdir(mode=0o700)
    if user is not None:
        os.chown(paths.pgdata, user.pw_uid, user.pw_gid)
    print(f"devdb: initialising a PostgreSQL cluster in {paths.pgdata}", file=sys.stderr)
    _run(
        [
            bindir / "initdb",
            "-D",
            paths.pgdata,
            "--username",
            SUPERUSER,
            "--auth",
            "trust",  # listens on 127.0.0.1 only; a development server
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        ],
        user,
        paths,
        "initdb",
    )


def _server_options(paths: Paths, port: int) -> list[str]:
    sockets = str(paths.sockets)
    if len(sockets) > SOCKET_PATH_MAX:
        sockets = ""  # too long for a unix socket path: TCP only
    options = {
        "listen_addresses": HOST,
        "port": str(port),
        "unix_socket_directories": sockets,
        "max_connections": "200",
    }
    if fast_mode():
        # Tests throw their data away; durability only costs time there.
        options |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    return [f"-c {shlex.quote(f'{key}={value}')}" for key, value in options.items()]


def _start(paths: Paths, bindir: Path, user: pwd.struct_passwd | None, port: int) -> None:
    print(f"devdb: starting PostgreSQL on {HOST}:{port} (log: {paths.log})", file=sys.stderr)
    _run(
        [
            bindir / "pg_ctl",
            "-D",
            paths.pgdata,
            "-l",
            paths.log,
            "-w",
            "-t",
            str(START_TIMEOUT),
            # pg_ctl hands this string to /bin/sh, hence the quoting in _server_options.
            "-o",
            " ".join(_server_options(paths, port)),
            "start",
        ],
        user,
        paths,
        "pg_ctl start",
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not _can_connect(port, "postgres"):
        if time.monotonic() > deadline:
            raise DevDBError(
                f"PostgreSQL started but does not accept connections on {HOST}:{port} "
                f"(log: {paths.log})"
            )
        time.sleep(0.1)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # PostgreSQL sets SO_REUSEADDR too, so a port in TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _check_port_free(port: int) -> None:
    if not _port_is_free(port):
        raise DevDBError(
            f"Port {port} on {HOST} (PRIVATE_PG_PORT) is in use by another program, so the "
            "private PostgreSQL cannot listen there: unset PRIVATE_PG_PORT to have a free "
            "port chosen, or set DATABASE_URL to use an existing server."
        )


def _create_database(port: int) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(_conninfo(port, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))


# --- Running commands ------------------------------------------------------------------


def _as_user(user: pwd.struct_passwd | None) -> dict:
    """subprocess arguments that run a command as `user` (the same as runuser -u)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _server_env() -> dict[str, str]:
    # A node under test may run inside faketime; the server it starts must not, or
    # "database time" would be skewed too.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKETIME")}
    preload = [p for p in env.get("LD_PRELOAD", "").split() if "faketime" not in p]
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    env.pop("PGDATA", None)
    env.pop("PGPORT", None)
    return env


def _run(cmd: list, user: pwd.struct_passwd | None, paths: Paths, what: str) -> None:
    log = paths.data_dir / "devdb-cmd.log"
    with open(log, "w+") as out:
        # Output goes to a file, not a pipe: the postmaster outlives pg_ctl and would hold
        # a pipe open. A new session keeps a terminal's Ctrl-C away from the server.
        result = subprocess.run(
            [str(c) for c in cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.data_dir,  # the server user may not be able to enter our cwd
            env=_server_env(),
            start_new_session=True,
            **_as_user(user),
        )
        out.seek(0)
        output = out.read()
    if result.returncode != 0:
        logs = f"{log}, {paths.log}" if what.startswith("pg_ctl") else str(log)
        detail = _last_line(output)
        if what.startswith("pg_ctl") and paths.log.exists():
            detail = _last_line(_read(paths.log)) or detail
        raise DevDBError(f"{what} failed (exit {result.returncode}): {detail} (logs: {logs})")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read: {exc})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# --- Command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    default_dir = Path(__file__).resolve().parent.parent / ".data"
    parser = argparse.ArgumentParser(prog="python -m controlplane.devdb", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "status", "url"])
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    args = parser.parse_args(argv)
    paths = server_paths(args.data_dir)

    try:
        if args.command == "start":
            print(ensure_private_postgres(args.data_dir))
        elif args.command == "stop":
            stopped = stop_private_postgres(args.data_dir)
            print("stopped" if stopped else f"not running ({paths.pgdata})")
        elif args.command == "url":
            port = current_port(paths)
            if port is None:
                print(f"no port chosen yet ({paths.pgdata}): start it first", file=sys.stderr)
                return 3
            print(database_url(port))
        else:
            port = _running_port(paths)
            if port is None:
                print(f"not running ({paths.pgdata})")
                return 3  # as pg_ctl status does
            print(f"running: {database_url(port)} (data {paths.pgdata}, log {paths.log})")
    except DevDBError as exc:
        print(f"devdb: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
