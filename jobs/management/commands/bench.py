from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, DjangoHelpFormatter
from django.db import connection

from jobs.bench import (
    ALL_SECTIONS,
    BENCH_REDIS_DB,
    SECTIONS,
    Bench,
    BenchDatabase,
    BenchError,
    bench_broker_url,
    sizes_from_options,
)

JSON_KEYS = """
The last line of output is one JSON object (null for a section not run):
  server                  {version, fsync, synchronous_commit, full_page_writes, durable}:
                          what it ran on; figures worth quoting come from a durable server
  triggers                backlog size of the claim, raw and e2e sections
  claim                   list of {nodes, batch, fires, seconds, fires_per_s, complete}:
                          executions recorded / (last created_at - release of the
                          backlog); complete is false when capped before the backlog drained
  raw_fires, raw_seconds, raw_fires_per_s
                          the claim transaction of jobs/claims.py in a tight loop from
                          plain psycopg (batch 100, one connection)
  minimal_fires, minimal_seconds, minimal_fires_per_s
                          the same loop on copies of the tables with only the primary
                          keys, the fires' uniqueness index and the due index
  node_1x100_fires_per_s  claim rate of one node with batch 100, right after them
  raw_rounds              list of {raw_fires_per_s, minimal_fires_per_s, node_fires_per_s,
                          schema_ratio, node_raw_ratio}: the raw section's rounds of the
                          three (--raw-rounds, default 3); each figure above is the
                          round whose rate is the median, and the two ratios below are
                          the medians of the rounds' ratios
  schema_ratio            raw / minimal fires/s (target >= 0.6)
  node_raw_ratio          node at batch 100 / raw fires/s (target >= 0.7)
  e2e_succeeded, e2e_seconds, e2e_per_s
                          one node, batch 100: succeeded executions / (last finished_at -
                          first dispatched_at) (target >= 7000/s)
  e2e_node_cpu_us, e2e_db_cpu_us, e2e_cores_busy
                          CPU over that run (from the release to the drain, /proc): us per
                          run of the node's process and of the database server's processes
                          (null when the server runs on another machine), and the cores
                          this machine kept busy on average
  lag_triggers, lag_p50_ms, lag_p99_ms, lag_max_ms
                          dispatched_at - scheduled_for of one-off triggers due evenly over
                          10 s, one idle node (target p99 < 20 ms)
  idle_window_s, idle_transactions, idle_qps
                          transactions of an idle node per second, from pg_stat_database
                          (target < 1)
  mixed_nodes, mixed_seconds, mixed_runs
                          the mixed section: nodes (default 4), seconds of firing (default
                          60) of 40 every-second triggers, 4 of them sleeping 1.5 s
  mixed_start_lag_p50_ms, mixed_start_lag_p99_ms, mixed_start_lag_max_ms
                          started_at - scheduled_for of those runs (target p99 <= 50 ms)
  mixed_node_shares, mixed_max_share
                          each node's fraction of the runs, and the largest as a multiple
                          of the fair share (target <= 2)
  celery_triggers         backlog size of the celery section (default 5000)
  celery_worker_concurrency
                          prefork processes per Celery worker (--worker-concurrency)
  celery_rounds           rounds of ours then bare per worker count (--celery-rounds,
                          default 3); every celery_1w_* and celery_2w_* figure below but
                          the list of ratios is the round of the median ratio's
  celery_1w_succeeded, celery_1w_seconds, celery_1w_per_s, celery_1w_complete
  celery_2w_succeeded, celery_2w_seconds, celery_2w_per_s, celery_2w_complete
                          one node (batch 100) publishing celery runs of demo.noop, with 1
                          and with 2 real Celery workers: succeeded executions / (last
                          finished_at - first dispatched_at); each capped at 30 s, complete
                          is false when capped before every run succeeded
  celery_1w_bare_tasks, celery_1w_bare_seconds, celery_1w_bare_per_s, celery_1w_bare_complete
  celery_2w_bare_tasks, ...
                          bare no-op tasks (bench.noop: no database, no bookkeeping) of the
                          same number, published by the bench to the same queue and run by
                          the same workers: tasks / (all run - first publish)
  celery_1w_bare_ratio, celery_2w_bare_ratio
                          ours / bare (target >= 0.5 with 2 workers)
  celery_1w_bare_ratios, celery_2w_bare_ratios
                          ours / bare of every round, in the order run (a round capped
                          before all ran ends the rounds)
  celery_1w_cpu_ms, celery_1w_cores_busy, celery_1w_bare_cpu_ms, celery_1w_bare_cores_busy
  celery_2w_cpu_ms, ...
                          this machine's CPU (all of it, from /proc/stat: the database's too
                          when it runs here) over each measurement, per run or bare task
                          in ms, and the cores busy on average; null without /proc/stat
  celery_1w_node_cpu_ms, celery_1w_db_cpu_ms, celery_1w_bare_db_cpu_ms
  celery_2w_node_cpu_ms, ...
                          of that, per run or bare task: the node's process and the database
                          server's processes (null when the server runs on another machine)
  machine_cores           this machine's CPU count
  scale_*                 with --scale: scale_triggers not due and scale_prune_executions
                          succeeded executions past the retention in the tables;
                          scale_idle_qps (target < 1) of one idle node; scale_lag_p99_ms and
                          scale_prune_lag_p99_ms, fire lag of 2 nodes without and with the
                          batched prune running, each the p99 of scale_lag_windows windows'
                          fires together (each window's own: scale_lag_window_p99_ms,
                          scale_prune_lag_window_p99_ms), scale_prune_lag_ratio (target <= 2),
                          scale_pruned, scale_prune_seconds, scale_prune_batches,
                          scale_prune_covered (pruning lasted past the last fire);
                          scale_due triggers due in the same second drained by the same 2
                          nodes: scale_drain_claimed_s, scale_drain_finished_s (target <= 20)
  celery_inline_triggers, celery_inline_per_s
                          the inline figure printed beside them: e2e_per_s when the e2e
                          section ran, else the same measurement on celery_triggers
  targets                 the targets above

All times are database times. Runs in a separate database <name>_bench, dropped at the end.
"""
BROKER_NOTE = f"""\
The celery section's workers serve the queue bench.<name>_bench, purged before and after,
on the broker of --broker (default: CELERY_BROKER_URL, but on Redis database
{BENCH_REDIS_DB} rather than its own).
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


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError("give a positive integer")
    return number


def _sections(value: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = set(chosen) - set(ALL_SECTIONS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(ALL_SECTIONS)}")
    return chosen


class Command(BaseCommand):
    help = (
        "Benchmark the scheduler: claim throughput of 1..N node processes and batch sizes, "
        "the raw-SQL claim limit, end-to-end runs per second, fire lag, the idle "
        "node's queries per second, start lag and node shares under a mix of fast and slow "
        "jobs, and end-to-end runs per second through 1 and 2 Celery workers. Prints a "
        "table, then one JSON line."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = _HelpFormatter
        parser.epilog = JSON_KEYS + BROKER_NOTE
        return parser

    def add_arguments(self, parser):
        parser.add_argument("--triggers", type=int, help="Backlog size (default 50000).")
        parser.add_argument("--nodes", type=_int_list, help="Node counts (default 1,2,4).")
        parser.add_argument("--batches", type=_int_list, help="Batch sizes (default 1,10,100).")
        parser.add_argument("--cap", type=float, help="Seconds per claim combination (default 20).")
        parser.add_argument(
            "--idle-seconds", type=float, help="Idle measurement window (default 30)."
        )
        parser.add_argument(
            "--quick",
            action="store_true",
            help="Small sizes for a smoke run (2000 triggers, nodes 1,2, batches 10,100; "
            "300 celery triggers, 1 round of each).",
        )
        parser.add_argument(
            "--only",
            type=_sections,
            default=SECTIONS,
            help=f"Sections to run, comma-separated: {','.join(ALL_SECTIONS)} (default all but"
            " scale).",
        )
        parser.add_argument(
            "--scale",
            action="store_true",
            help="Also run the scale section: the idle node beside 1,000,000 triggers, 100,000 "
            "triggers due at once drained by 2 nodes, fire lag while 1,000,000 old executions "
            "are pruned. Inserts millions of rows: minutes on a durable server.",
        )
        parser.add_argument(
            "--scale-triggers",
            type=_positive_int,
            help="Triggers not due beside the scale section's idle node (default 1000000).",
        )
        parser.add_argument(
            "--scale-due",
            type=_positive_int,
            help="Triggers due in the same second, drained by 2 nodes (default 100000).",
        )
        parser.add_argument(
            "--scale-prune",
            type=_positive_int,
            help="Old finished executions pruned while 2 nodes fire (default 1000000).",
        )
        parser.add_argument(
            "--idle-settle",
            type=float,
            help="Seconds an idle node is left alone before its queries are counted "
            "(default 11: the statistics of its start must be flushed first).",
        )
        parser.add_argument(
            "--celery-triggers",
            type=_positive_int,
            help="Backlog size of the celery section (default 5000).",
        )
        parser.add_argument(
            "--raw-rounds",
            type=_positive_int,
            help="Rounds of the raw loop, the minimal schema's and one node at batch 100; the "
            "ratios are the medians of the rounds' (default 3).",
        )
        parser.add_argument(
            "--celery-rounds",
            type=_positive_int,
            help="Rounds of ours then bare per worker count; the median round is reported "
            "(default 3).",
        )
        parser.add_argument(
            "--worker-concurrency",
            type=_positive_int,
            help="Prefork processes per Celery worker (default 2).",
        )
        parser.add_argument(
            "--celery-workers",
            type=_int_list,
            help="Celery worker counts of the celery section (default 1,2).",
        )
        parser.add_argument(
            "--mixed-seconds",
            type=float,
            help="Seconds of firing in the mixed section (default 60).",
        )
        parser.add_argument(
            "--mixed-nodes", type=_positive_int, help="Nodes of the mixed section (default 4)."
        )
        parser.add_argument(
            "--broker",
            help="Broker URL of the celery section (default: CELERY_BROKER_URL, on Redis "
            f"database {BENCH_REDIS_DB}); used as given.",
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
            options["celery_triggers"],
            options["worker_concurrency"],
            options["mixed_seconds"],
            options["mixed_nodes"],
            options["celery_workers"],
            idle_settle=options["idle_settle"],
            scale_triggers=options["scale_triggers"],
            scale_due=options["scale_due"],
            scale_prune=options["scale_prune"],
            celery_rounds=options["celery_rounds"],
            raw_rounds=options["raw_rounds"],
        )
        sections = options["only"]
        if options["scale"] and "scale" not in sections:
            sections = (*sections, "scale")
        db = BenchDatabase(connection.settings_dict)
        broker = options["broker"] or bench_broker_url(settings.CELERY_BROKER_URL)
        try:
            db.claim()  # before Bench makes its log directory: a refused run leaves nothing
        except BenchError as e:
            raise CommandError(str(e)) from None
        bench = Bench(db, sizes, out=self.stdout.write, progress=self._progress, broker=broker)
        try:
            with _sigterm_raises():
                results = bench.run(sections)
        except BenchError as e:
            raise CommandError(str(e)) from None
        finally:
            try:
                if not options["keep_db"]:
                    db.drop()
            finally:
                db.release()
        self.stdout.write(json.dumps(results.as_json()))

    def _progress(self, message: str) -> None:
        if self.verbosity >= 1:
            self.stderr.write(f"bench: {message}")


@contextlib.contextmanager
def _sigterm_raises():
    """Turn the first SIGTERM into a BenchError, so that the node and worker processes
    are stopped and the bench database dropped on the way out; a second one kills."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise BenchError("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
