from __future__ import annotations

import argparse
import json

from django.core.management.base import BaseCommand, CommandError, DjangoHelpFormatter
from django.db import connection

from jobs.bench import SECTIONS, Bench, BenchDatabase, BenchError, sizes_from_options

JSON_KEYS = """
The last line of output is one JSON object (null for a section not run):
  triggers                backlog size of the claim, raw and e2e sections
  claim                   list of {nodes, batch, fires, seconds, fires_per_s, complete}:
                          executions recorded / (last created_at - release of the
                          backlog); complete is false when capped before the backlog drained
  raw_fires, raw_seconds, raw_fires_per_s
                          the claim transaction of jobs/claims.py in a tight loop from
                          plain psycopg (batch 100, one connection)
  node_1x100_fires_per_s  claim rate of one node with batch 100
  node_raw_ratio          node_1x100_fires_per_s / raw_fires_per_s (target >= 0.7)
  e2e_succeeded, e2e_seconds, e2e_per_s
                          one node, batch 100: succeeded executions / (last finished_at -
                          first dispatched_at) (target >= 5000/s)
  lag_triggers, lag_p50_ms, lag_p99_ms, lag_max_ms
                          dispatched_at - scheduled_for of one-off triggers due evenly over
                          10 s, one idle node (target p99 < 20 ms)
  idle_window_s, idle_transactions, idle_qps
                          transactions of an idle node per second, from pg_stat_database
                          (target < 1)
  targets                 the targets above

All times are database times. Runs in a separate database <name>_bench, dropped at the end.
"""


class _HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _int_list(value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma-separated list") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError("give positive integers, e.g. 1,2,4")
    return numbers


def _sections(value: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = set(chosen) - set(SECTIONS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(SECTIONS)}")
    return chosen


class Command(BaseCommand):
    help = (
        "Benchmark the scheduler: claim throughput of 1..N node processes and batch sizes, "
        "the raw-SQL claim limit, end-to-end runs per second, fire lag and the idle "
        "node's queries per second. Prints a table, then one JSON line."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = _HelpFormatter
        parser.epilog = JSON_KEYS
        return parser

    def add_arguments(self, parser):
        parser.add_argument("--triggers", type=int, help="Backlog size (default 100000).")
        parser.add_argument("--nodes", type=_int_list, help="Node counts (default 1,2,4).")
        parser.add_argument("--batches", type=_int_list, help="Batch sizes (default 1,10,100).")
        parser.add_argument("--cap", type=float, help="Seconds per claim combination (default 20).")
        parser.add_argument(
            "--idle-seconds", type=float, help="Idle measurement window (default 30)."
        )
        parser.add_argument(
            "--quick",
            action="store_true",
            help="Small sizes for a smoke run (2000 triggers, nodes 1,2, batches 10,100).",
        )
        parser.add_argument(
            "--only",
            type=_sections,
            default=SECTIONS,
            help=f"Sections to run, comma-separated: {','.join(SECTIONS)} (default all).",
        )
        parser.add_argument(
            "--keep-db", action="store_true", help="Keep the bench database for inspection."
        )

    def handle(self, *args, **options):
        self.verbosity = options["verbosity"]
        if options["triggers"] is not None and options["triggers"] < 1:
            raise CommandError("--triggers must be at least 1")
        sizes = sizes_from_options(
            options["quick"],
            options["triggers"],
            options["nodes"],
            options["batches"],
            options["cap"],
            options["idle_seconds"],
        )
        db = BenchDatabase(connection.settings_dict)
        bench = Bench(db, sizes, out=self.stdout.write, progress=self._progress)
        try:
            results = bench.run(options["only"])
        except BenchError as e:
            raise CommandError(str(e)) from None
        finally:
            if not options["keep_db"]:
                db.drop()
        self.stdout.write(json.dumps(results.as_json()))

    def _progress(self, message: str) -> None:
        if self.verbosity >= 1:
            self.stderr.write(f"bench: {message}")
