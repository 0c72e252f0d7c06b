"""`make run`: the control plane and two scheduler nodes in one terminal.

Migrates, loads the demo data, then runs the web server and two scheduler nodes with
their output interleaved line by line, each line prefixed with its process. Ctrl-C (or
SIGTERM) sends SIGTERM to every child and waits while they drain; a second Ctrl-C kills
them. If a child exits on its own, the others are stopped too.

    python -m controlplane.devrun
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
ADDRESS = "127.0.0.1:8000"

# manage.py commands run one after the other before anything starts. The last one's
# output (load_demo's: the admin login) is repeated in the banner.
SETUP = [
    ["migrate", "--no-input"],
    ["load_demo"],  # creates the admin login and prints it; loads a few demo jobs
]

# Long-running manage.py commands, by the name that prefixes their output.
CHILDREN = {
    "web": ["runserver", ADDRESS, "--noreload"],
    "node-1": ["run_scheduler", "--node-id", "node-1"],
    "node-2": ["run_scheduler", "--node-id", "node-2"],
}

COLOURS = ["36", "33", "35", "32", "34"]  # ANSI cyan, yellow, magenta, green, blue


class Supervisor:
    def __init__(self, children: dict[str, list[str]], env: dict[str, str]) -> None:
        self.children = children
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.pumps: list[threading.Thread] = []
        self.signals = 0
        self.print_lock = threading.RLock()  # say() may run in a signal handler
        self.width = max(len(name) for name in children)
        self.colour = sys.stdout.isatty()

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        for index, (name, args) in enumerate(self.children.items()):
            self._start(name, args, COLOURS[index % len(COLOURS)])

        try:
            failed = self._wait_for_stop_or_failure()
        finally:
            # Whatever happened to us (even our terminal going away), the children stop.
            self._stop_all()
        for pump in self.pumps:
            pump.join(timeout=5)
        for name, proc in self.procs.items():
            self.say(f"{name} exited: {_describe(proc.returncode)}")
        return 1 if failed else 0

    def say(self, message: str) -> None:
        self._write(f"devrun: {message}\n")

    def _write(self, text: str) -> None:
        # A closed stdout (a pipe whose reader died with the Ctrl-C) must not stop us
        # from stopping the children.
        with self.print_lock:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except OSError:
                pass

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals += 1
        if self.signals > 1:
            self.say("second interrupt: killing everything")
            for proc in self._alive():
                _signal_group(proc, signal.SIGKILL)

    def _start(self, name: str, args: list[str], colour: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own process group: a terminal's Ctrl-C reaches only us, and we decide
            # what each child is sent (SIGTERM, which lets a node drain).
            process_group=0,
        )
        self.procs[name] = proc
        prefix = f"{name:<{self.width}} | "
        if self.colour:
            prefix = f"\033[{colour}m{prefix}\033[0m"
        pump = threading.Thread(target=self._pump, args=(proc, prefix), daemon=True)
        pump.start()
        self.pumps.append(pump)

    def _pump(self, proc: subprocess.Popen, prefix: str) -> None:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self._write(prefix + line + "\n")

    def _wait_for_stop_or_failure(self) -> bool:
        """Block until a signal arrives (False) or a child exits by itself (True)."""
        while not self.signals:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.say(
                        f"{name} exited unexpectedly ({_describe(proc.returncode)}); "
                        "stopping the others"
                    )
                    return True
            time.sleep(0.2)
        return False

    def _stop_all(self) -> None:
        alive = [name for name, proc in self.procs.items() if proc.poll() is None]
        if alive:
            self.say(f"stopping {', '.join(alive)} (SIGTERM)")
        for proc in self._alive():
            _signal_group(proc, signal.SIGTERM)
        announced = time.monotonic() + 2
        while self._alive():
            if announced and time.monotonic() > announced:
                names = ", ".join(n for n, p in self.procs.items() if p.poll() is None)
                self.say(f"waiting for {names} to finish (Ctrl-C again to kill)")
                announced = 0
            time.sleep(0.1)

    def _alive(self) -> list[subprocess.Popen]:
        return [proc for proc in self.procs.values() if proc.poll() is None]


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def _describe(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def _manage(args: list[str], env: dict[str, str], capture: bool = False) -> str:
    print(f"devrun: manage.py {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        text=True,
    )
    if capture and result.stdout:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"devrun: manage.py {' '.join(args)} failed ({result.returncode})")
    return result.stdout or ""


def _database(env: dict[str, str]) -> str:
    if env.get("DATABASE_URL"):
        return "DATABASE_URL from the environment"
    # Started here once so that its messages come first, not amid the children's.
    from controlplane.devdb import DevDBError, ensure_private_postgres

    try:
        return f"{ensure_private_postgres(BASE_DIR / '.data')} (private, data in .data/)"
    except DevDBError as exc:
        raise SystemExit(f"devrun: {exc}") from None


def _banner(database: str, setup_output: str, children: list[str]) -> str:
    rule = "=" * 72
    lines = [
        rule,
        f"  Control plane   http://{ADDRESS}/",
        f"  Admin           http://{ADDRESS}/admin/",
        f"  Database        {database}",
        *(f"  {line}" for line in setup_output.splitlines() if line.strip()),
        f"  Running         {', '.join(children)}. Ctrl-C stops them all.",
        rule,
    ]
    return "\n".join(lines)


def main(setup: list[list[str]] = SETUP, children: dict[str, list[str]] = CHILDREN) -> int:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    # The demo jobs (load_demo) run the demo targets, which production never registers.
    env.setdefault("SCHEDULER_DEMO_TARGETS", "1")
    try:
        database = _database(env)
        output = ""
        for index, args in enumerate(setup):
            output = _manage(args, env, capture=index == len(setup) - 1)
    except KeyboardInterrupt:
        return 130
    print(_banner(database, output, list(children)), flush=True)
    return Supervisor(children, env).run()


if __name__ == "__main__":
    sys.exit(main())
