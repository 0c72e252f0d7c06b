"""The web process's /metrics (request metrics and cluster gauges), /healthz, /readyz,
and the alert rules, checked with promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import yaml
from django.db import connection
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobs import metrics as node_metrics
from jobs.models import Execution
from locks.maintenance import stale_locks
from locks.models import Lock, SchedulerNode
from tests.conftest import ROOT
from tests.jobs.factories import make_job

ALERTS = ROOT / "monitoring" / "alerts.yml"
CLUSTER_FAMILIES = (
    "scheduler_cluster_nodes",
    "scheduler_cluster_executions",
    "scheduler_cluster_pending_due",
    "scheduler_cluster_pending_oldest_age_seconds",
    "scheduler_cluster_locks_held",
    "scheduler_cluster_locks_oldest_held_age_seconds",
    "scheduler_cluster_locks_stale",
    "scheduler_cluster_scrape_error",
    "scheduler_cluster_scrape_duration_seconds",
)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run Debian's promtool; fail (never skip) when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing: `make test` installs it (Debian's prometheus package), "
            "or run `apt-get install prometheus`"
        )
    return subprocess.run(
        [path, *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.content.decode()


def exported_names(text: str) -> set[str]:
    """Every series name a text exposition declares or carries samples of."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            names.update(name.removesuffix("_total") + s for s in suffixes.get(kind, []))
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group())
    return names


# --- /metrics -------------------------------------------------------------------------


def test_metrics_are_served_without_login_with_request_and_cluster_metrics(client, db):
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert value(text, "django_http_requests_total_by_method_total", method="GET") >= 1
    families = {f.name for f in text_string_to_metric_families(text)}
    assert set(CLUSTER_FAMILIES) <= families
    assert value(text, "scheduler_cluster_scrape_error") == 0


def test_pages_other_than_metrics_and_health_still_need_a_login(client, db):
    for path in ("/", "/nodes/", "/locks/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.fixture
def cluster():
    """Nodes, executions and locks of every kind the gauges count, times set in database
    time (a test's transaction has one now(), so the ages are exact)."""
    job = make_job("gauged")
    for node_id, state in [("live", "active"), ("silent", "active"), ("gone", "dead"),
                           ("done", "stopped")]:  # fmt: skip
        SchedulerNode.objects.create(id=node_id, hostname="h", pid=1, state=state)
    finished = Execution.objects.create(
        job=job, scheduled_for="2026-01-01T00:00Z", origin="manual", state="succeeded"
    )
    for state, node in [("pending", ""), ("pending", ""), ("dispatched", "live"),
                        ("running", "live")]:  # fmt: skip
        Execution.objects.create(
            job=job, scheduled_for="2026-01-01T00:00Z", origin="manual", state=state, node=node
        )
    for name, holder, execution in [
        ("cluster:leader", "live", None),
        (f"job:{job.pk}", "live", finished),  # its execution finished: stale
        ("app:healthy", "live", None),
        ("app:dead-holder", "gone", None),  # stale
        ("app:expired", "some-worker", None),  # stale once its lease is over (below)
    ]:
        Lock.objects.create(name=name, holder=holder, token=1, execution=execution)
    Lock.objects.create(name="app:free", holder="", token=4)
    with connection.cursor() as cursor:
        cursor.execute("""
            UPDATE locks_schedulernode SET last_heartbeat = now() - interval '1 hour'
            WHERE id = 'silent';
            UPDATE jobs_execution SET run_after = now() - interval '90 seconds'
            WHERE id = (SELECT min(id) FROM jobs_execution WHERE state = 'pending');
            UPDATE jobs_execution SET run_after = now() + interval '1 minute'
            WHERE id = (SELECT max(id) FROM jobs_execution WHERE state = 'pending');
            UPDATE locks_lock SET locked_at = now() - interval '10 minutes',
                                  locked_until = now() + interval '1 minute';
            UPDATE locks_lock SET locked_at = now() - interval '1 hour'
            WHERE name = 'cluster:leader';
            UPDATE locks_lock SET locked_at = now() - interval '20 minutes',
                                  locked_until = now() - interval '5 minutes'
            WHERE name = 'app:expired';
            UPDATE locks_lock SET locked_until = now() - interval '1 minute'
            WHERE name = 'app:free';
        """)  # fmt: skip
    return job


def test_cluster_gauges_count_nodes_backlog_and_locks_in_database_time(client, db, cluster):
    text = scrape(client)

    def gauge(name, **labels):
        return value(text, name, **labels)

    assert gauge("scheduler_cluster_scrape_error") == 0
    for state, count in {"live": 1, "overdue": 1, "dead": 1, "stopped": 1}.items():
        assert gauge("scheduler_cluster_nodes", state=state) == count, state
    for state, count in {"pending": 2, "dispatched": 1, "running": 1}.items():
        assert gauge("scheduler_cluster_executions", state=state) == count, state
    # The retry-like pending row (run_after in a minute) is not due, nor the oldest.
    assert gauge("scheduler_cluster_pending_due") == 1
    assert gauge("scheduler_cluster_pending_oldest_age_seconds") == 90
    for kind, count in {"leader": 1, "job": 1, "app": 3}.items():
        assert gauge("scheduler_cluster_locks_held", kind=kind) == count, kind
    oldest = {"leader": 3600, "job": 600, "app": 1200}
    for kind, seconds in oldest.items():
        assert gauge("scheduler_cluster_locks_oldest_held_age_seconds", kind=kind) == seconds
    stale = {"dead_holder": 1, "finished_execution": 1, "expired": 1}
    for reason, count in stale.items():
        assert gauge("scheduler_cluster_locks_stale", reason=reason) == count, reason
    # The same locks the locks page and the leader's cleanup call stale.
    assert {s.name for s in stale_locks()} == {
        "app:dead-holder",
        "app:expired",
        f"job:{cluster.pk}",
    }


def test_cluster_gauges_of_an_empty_cluster_are_zero(client, db):
    text = scrape(client)
    gauges = {
        (name, labels): sample
        for (name, labels), sample in samples(text).items()
        if name.startswith("scheduler_cluster_") and not name.endswith("_duration_seconds")
    }
    assert len(gauges) == 4 + 3 + 1 + 1 + 3 + 3 + 3 + 1
    assert set(gauges.values()) == {0}


def test_the_cluster_collector_is_registered_once(client, db):
    from controlplane.metrics import register_cluster_collector

    assert register_cluster_collector() is register_cluster_collector()
    assert scrape(client).count("# TYPE scheduler_cluster_nodes gauge") == 1


def test_scraped_metrics_pass_promtool_check_metrics(client, db, cluster):
    # Traffic of several kinds first, so the request metrics have samples to lint.
    for path in ("/healthz", "/readyz", "/login/", "/", "/no-such-page"):
        client.get(path)
    client.post("/login/", {"username": "nobody", "password": "wrong"})
    text = scrape(client)
    assert value(text, "django_http_responses_total_by_status_total", status="404") >= 1
    done = promtool("check", "metrics", stdin=text)
    assert done.returncode == 0 and not done.stdout + done.stderr, done.stdout + done.stderr


def test_node_metrics_pass_promtool_check_metrics():
    done = promtool("check", "metrics", stdin=generate_latest(node_metrics.REGISTRY).decode())
    assert done.returncode == 0 and not done.stdout + done.stderr, done.stdout + done.stderr


# --- alert rules ----------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_rules():
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_duration_a_severity_and_a_summary_and_description():
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    assert {"SchedulerNodeDead", "SchedulerFireLagHigh", "SchedulerStaleLocks",
            "SchedulerFailureRateHigh", "SchedulerPendingBacklogGrowing"} <= alerts  # fmt: skip
    for rule in rules:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_metric_name_used_by_the_alert_rules_is_exported(client, db):
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    used = set()
    for rule in rules:
        for text in (rule["expr"], *rule["annotations"].values()):
            used.update(re.findall(r"\bscheduler_[a-z0-9_]*[a-z0-9]\b", text))
    assert "scheduler_fire_lag_seconds_bucket" in used
    exported = exported_names(scrape(client)) | exported_names(
        generate_latest(node_metrics.REGISTRY).decode()
    )
    assert used - exported == set()


def test_alert_rules_fire_on_the_conditions_they_describe(tmp_path):
    """promtool's rule unit tests, on synthetic series: each alert fires when it should
    and stays quiet when it should not."""
    tests = textwrap.dedent(f"""
        rule_files: [{ALERTS}]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              # Two web instances report the same cluster: a node dies at minute 5.
              - series: 'scheduler_cluster_nodes{{state="dead",instance="web-1"}}'
                values: '0x5 1x40'
              - series: 'scheduler_cluster_nodes{{state="dead",instance="web-2"}}'
                values: '0x5 1x40'
              - series: 'scheduler_cluster_nodes{{state="live",instance="web-1"}}'
                values: '2x5 1x40'
              - series: 'scheduler_cluster_locks_stale{{reason="expired",instance="web-1"}}'
                values: '1x30'
              - series: 'scheduler_cluster_pending_oldest_age_seconds{{instance="web-1"}}'
                values: '0+60x30'
              # Every fire about 7 s late.
              - series: 'scheduler_fire_lag_seconds_bucket{{le="5.0",instance="n-1"}}'
                values: '0x30'
              - series: 'scheduler_fire_lag_seconds_bucket{{le="10.0",instance="n-1"}}'
                values: '0+10x30'
              - series: 'scheduler_fire_lag_seconds_bucket{{le="+Inf",instance="n-1"}}'
                values: '0+10x30'
              # Half the runs fail, with traffic.
              - series: 'scheduler_executions_finished_total{{job_name="a",state="failed",instance="n-1"}}'
                values: '0+3x30'
              - series: 'scheduler_executions_finished_total{{job_name="a",state="succeeded",instance="n-1"}}'
                values: '0+3x30'
            promql_expr_test:
              - expr: ALERTS{{alertstate="firing"}}
                eval_time: 25m
                exp_samples:
                  - labels: 'ALERTS{{alertname="SchedulerStaleLocks",alertstate="firing",severity="warning",reason="expired"}}'
                    value: 1
                  - labels: 'ALERTS{{alertname="SchedulerPendingBacklogOld",alertstate="firing",severity="warning"}}'
                    value: 1
                  - labels: 'ALERTS{{alertname="SchedulerFireLagHigh",alertstate="firing",severity="warning"}}'
                    value: 1
                  - labels: 'ALERTS{{alertname="SchedulerFailureRateHigh",alertstate="firing",severity="warning"}}'
                    value: 1
              - expr: ALERTS{{alertname="SchedulerNodeDead",alertstate="firing"}}
                eval_time: 10m
                exp_samples:
                  - labels: 'ALERTS{{alertname="SchedulerNodeDead",alertstate="firing",severity="critical",state="dead"}}'
                    value: 1
          - interval: 1m
            input_series:
              # One failure out of two runs in 15 minutes: too little traffic to page.
              - series: 'scheduler_executions_finished_total{{job_name="a",state="failed",instance="n-1"}}'
                values: '0x10 1x20'
              - series: 'scheduler_executions_finished_total{{job_name="a",state="succeeded",instance="n-1"}}'
                values: '0x10 1x20'
              # The backlog grows by one a minute for 40 minutes.
              - series: 'scheduler_cluster_pending_due{{instance="web-1"}}'
                values: '0+1x40'
              - series: 'scheduler_cluster_nodes{{state="live",instance="web-1"}}'
                values: '0x40'
            promql_expr_test:
              - expr: ALERTS{{alertstate="firing"}}
                eval_time: 35m
                exp_samples:
                  - labels: 'ALERTS{{alertname="SchedulerPendingBacklogGrowing",alertstate="firing",severity="warning"}}'
                    value: 1
                  - labels: 'ALERTS{{alertname="SchedulerNoLiveNode",alertstate="firing",severity="critical"}}'
                    value: 1
    """)  # noqa: E501
    path = tmp_path / "alerts_test.yml"
    path.write_text(tests)
    done = promtool("test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


# --- health ---------------------------------------------------------------------------


def test_healthz_answers_anonymously_without_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.content == b"ok\n"


def test_readyz_is_ready_when_the_database_answers_and_migrations_are_applied(client, db):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.content == b"ready\n"


def test_readyz_is_not_ready_while_a_migration_is_unapplied(client, db):
    with connection.cursor() as cursor:
        # Rolled back with the test's transaction.
        cursor.execute(
            "DELETE FROM django_migrations WHERE id = "
            "(SELECT max(id) FROM django_migrations WHERE app = 'jobs')"
        )
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.content == b"not ready: 1 migration(s) not applied\n"


# The web process with its database down: a real process, pointed at a closed port.
UNREACHABLE_SCRIPT = """
import json, django
django.setup()
from django.test import Client
client = Client()
out = {}
for path in ("/healthz", "/readyz", "/metrics"):
    response = client.get(path)
    out[path] = [response.status_code, response.content.decode()]
print(json.dumps(out))
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_the_database_metrics_report_a_scrape_error_and_readyz_is_not_ready():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "DATABASE_URL": f"postgres://nobody@127.0.0.1:{closed_port()}/none",
        "ALLOWED_HOSTS": "testserver",
        "LOG_LEVEL": "CRITICAL",
    }
    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE_SCRIPT],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["/healthz"] == [200, "ok\n"]
    assert out["/readyz"] == [503, "not ready: database unavailable (OperationalError)\n"]
    status, text = out["/metrics"]
    assert status == 200
    assert value(text, "scheduler_cluster_scrape_error") == 1
    assert value(text, "scheduler_cluster_nodes", state="live") is None
    assert "django_http_requests_total_by_method_total" in text
