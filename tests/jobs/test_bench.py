"""`manage.py bench` runs end to end in its own database (figures are not asserted)."""

from __future__ import annotations

import json
from io import StringIO

import dj_database_url
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from jobs.bench import BenchDatabase
from jobs.models import Execution, Trigger
from tests.jobs.factories import due_triggers, make_job

JSON_NUMBERS = [
    "triggers",
    "raw_fires",
    "raw_seconds",
    "raw_fires_per_s",
    "node_1x100_fires_per_s",
    "node_raw_ratio",
    "e2e_succeeded",
    "e2e_seconds",
    "e2e_per_s",
    "lag_triggers",
    "lag_p50_ms",
    "lag_p99_ms",
    "lag_max_ms",
    "idle_window_s",
    "idle_transactions",
    "idle_qps",
]


def database_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %s)", [name])
        return cursor.fetchone()[0]


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_it_prints_a_table_and_a_json_line_of_positive_figures_in_its_own_database():
    # Data in the test database, which the bench must leave alone.
    job = make_job("mine", "demo.noop")
    mine = due_triggers(job, 3, spread_seconds=3600)
    bench_db = BenchDatabase(connection.settings_dict).name
    assert bench_db == f"{connection.settings_dict['NAME']}_bench"

    out, err = StringIO(), StringIO()
    call_command("bench", "--quick", "--idle-seconds", "4", stdout=out, stderr=err)

    text = out.getvalue()
    for heading in ("Claim throughput", "Raw-SQL claim limit", "End to end", "Fire lag"):
        assert heading in text
    assert "Idle node" in text
    assert "nodes  batch" in text
    figures = json.loads(text.strip().splitlines()[-1])
    for key in JSON_NUMBERS:
        assert isinstance(figures[key], int | float) and figures[key] > 0, (key, figures[key])
    combos = {(c["nodes"], c["batch"]) for c in figures["claim"]}
    assert combos == {(1, 10), (1, 100), (2, 10), (2, 100)}
    for combo in figures["claim"]:
        assert combo["fires"] > 0 and combo["seconds"] > 0 and combo["fires_per_s"] > 0
    assert set(figures["targets"]) == {"ratio", "e2e_per_s", "lag_p99_ms", "idle_qps"}

    assert not database_exists(bench_db)
    assert [t.pk for t in Trigger.objects.order_by("pk")] == [t.pk for t in mine]
    assert not Execution.objects.exists()


@pytest.mark.django_db
def test_it_rejects_an_unknown_section_before_creating_anything():
    with pytest.raises(CommandError, match="choose from"):
        call_command("bench", "--only", "claim,speed")
    assert not database_exists(BenchDatabase(connection.settings_dict).name)


def test_the_bench_database_url_reaches_the_same_server_under_the_bench_name():
    main = {
        "NAME": "sched",
        "HOST": "/run/postgresql",
        "PORT": "5433",
        "USER": "ops",
        "PASSWORD": "p@ss:w/rd",
        "OPTIONS": {"sslmode": "prefer", "application_name": "web"},
    }
    parsed = dj_database_url.parse(BenchDatabase(main).url())
    assert parsed["NAME"] == "sched_bench"
    assert (parsed["HOST"], str(parsed["PORT"])) == ("/run/postgresql", "5433")
    assert (parsed["USER"], parsed["PASSWORD"]) == ("ops", "p@ss:w/rd")
    assert parsed["OPTIONS"] == {"sslmode": "prefer"}
