"""A separate process that takes cluster locks, for tests that need real contenders.

    python -m tests.locks.lock_worker race    --name N --holder H --out F --rounds 5 --barrier 7
    python -m tests.locks.lock_worker hold    --name N --holder H --out F --at-most 2
    python -m tests.locks.lock_worker acquire --name N --holder H --out F --at-most 3

The database is the one in DATABASE_URL. Each event is appended to ``--out`` as one JSON
line, so the test can wait for it without sharing a clock with this process.

``race`` starts each round at a barrier in the database: the test holds the exclusive
advisory lock (barrier, round) and each worker blocks on the shared one, so releasing it
lets every worker go at the same moment. The round's winner keeps the lock until the
test opens the second barrier (barrier + 1, round), so no slow loser can take it after a
release and make a round look like it had two winners.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["race", "hold", "acquire"])
    parser.add_argument("--name", required=True)
    parser.add_argument("--holder", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--at-most", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--barrier", type=int, default=0)
    args = parser.parse_args()

    os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    import django

    django.setup()

    {"race": race, "hold": hold, "acquire": acquire_once}[args.mode](args)


def report(args, **event) -> None:
    with open(args.out, "a") as out:
        out.write(json.dumps({"holder": args.holder, **event}) + "\n")


def pass_barrier(key: int, round_: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock_shared(%s, %s)", [key, round_])
        cursor.execute("SELECT pg_advisory_unlock_shared(%s, %s)", [key, round_])


def race(args) -> None:
    from locks.leases import acquire

    for round_ in range(1, args.rounds + 1):
        pass_barrier(args.barrier, round_)
        lease = acquire(args.name, args.holder, at_most=args.at_most)
        report(args, round=round_, won=lease is not None, token=lease and lease.token)
        if lease is not None:
            pass_barrier(args.barrier + 1, round_)
            lease.release()
            report(args, round=round_, released=True)


def hold(args) -> None:
    """Hold the lock with keepalive until killed."""
    from locks.leases import cluster_lock

    with cluster_lock(args.name, at_most=args.at_most, holder=args.holder) as lease:
        report(args, token=lease.token)
        threading.Event().wait()


def acquire_once(args) -> None:
    """Take the lock without keepalive and exit; also report this process's wall clock."""
    from locks.leases import acquire

    lease = acquire(args.name, args.holder, at_most=args.at_most)
    report(args, token=lease and lease.token, wall_clock=time.time())


if __name__ == "__main__":
    main()
