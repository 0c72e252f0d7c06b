from __future__ import annotations

import signal

from django.core.management.base import BaseCommand, CommandError

from jobs.node import Node


class Command(BaseCommand):
    help = "Run a scheduler node: claim due triggers and pending executions, and run them."

    def add_arguments(self, parser):
        parser.add_argument("--node-id", help="Node id (default: host:pid:random).")
        parser.add_argument("--batch", type=int, help="Triggers claimed per transaction.")
        parser.add_argument("--threads", type=int, help="Threads of the inline executor.")

    def handle(self, *args, node_id=None, batch=None, threads=None, **options):
        if batch is not None and batch < 1:
            raise CommandError("--batch must be at least 1")
        if threads is not None and threads < 1:
            raise CommandError("--threads must be at least 1")
        node = Node(node_id=node_id, batch=batch, threads=threads)
        # SIGTERM and Ctrl-C both drain: stop claiming, let running work finish, exit.
        signal.signal(signal.SIGTERM, node.stop)
        signal.signal(signal.SIGINT, node.stop)
        node.run_forever()
