from __future__ import annotations

import logging
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from jobs import metrics
from jobs.node import Node
from jobs.reconnect import use_scheduler_connection_options

log = logging.getLogger("jobs.metrics")


class Command(BaseCommand):
    help = "Run a scheduler node: claim due triggers and pending executions, and run them."

    def add_arguments(self, parser):
        parser.add_argument("--node-id", help="Node id (default: host:pid:random).")
        parser.add_argument("--batch", type=int, help="Triggers claimed per transaction.")
        parser.add_argument("--threads", type=int, help="Threads of the inline executor.")
        parser.add_argument(
            "--metrics-port",
            type=int,
            help="Serve Prometheus metrics on this port, 0 for none "
            "(default: SCHEDULER_METRICS_PORT).",
        )
        parser.add_argument(
            "--metrics-addr",
            help="Address the metrics endpoint listens on (default: SCHEDULER_METRICS_ADDR).",
        )

    def handle(
        self, *args, node_id=None, batch=None, threads=None, metrics_port=None,
        metrics_addr=None, **options,
    ):  # fmt: skip
        if batch is not None and batch < 1:
            raise CommandError("--batch must be at least 1")
        if threads is not None and threads < 1:
            raise CommandError("--threads must be at least 1")
        port = settings.SCHEDULER_METRICS_PORT if metrics_port is None else metrics_port
        addr = metrics_addr or settings.SCHEDULER_METRICS_ADDR
        if not 0 <= port <= 65535:
            raise CommandError("--metrics-port must be between 0 and 65535")
        node = Node(node_id=node_id, batch=batch, threads=threads)
        server = None
        if port:
            try:
                server = metrics.serve(node, port, addr)
            except OSError as e:
                raise CommandError(f"cannot serve metrics on {addr}:{port}: {e}") from None
            log.info("serving metrics on http://%s:%s/metrics", addr, port)
        # SIGTERM and Ctrl-C both drain: stop claiming, let running work finish, exit.
        signal.signal(signal.SIGTERM, node.stop)
        signal.signal(signal.SIGINT, node.stop)
        # Last: an error above leaves the process's connections as they were.
        use_scheduler_connection_options()
        # Nothing above opens one today; one opened by a future start-up step would keep
        # the server's planner settings for the node's whole life.
        connection.close()
        try:
            node.run_forever()
        finally:
            if server is not None:
                server.shutdown()
