"""Schemathesis against the live schema: no operation answers a server error or breaks it."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobs.models import Execution, Trigger, database_now
from locks.leases import acquire
from locks.models import SchedulerNode
from tests.conftest import make_api_key
from tests.jobs.factories import make_job

pytestmark = pytest.mark.django_db(transaction=True)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 15


@pytest.fixture
def some_data():
    """A little of everything, so that generated ids sometimes find a row."""
    job = make_job("fuzzed", "demo.noop")
    Trigger.objects.create(job=job, kind="cron", cron="*/5 * * * *", timezone="Europe/Paris")
    Execution.objects.create(job=job, scheduled_for=database_now(), origin="manual",
                             state="failed", error="boom")  # fmt: skip
    SchedulerNode.objects.create(id="host:1:abc", hostname="host", pid=1)
    acquire("fuzz:lock", holder="host:1:abc", at_most=600)


def test_no_operation_answers_a_server_error_or_breaks_the_schema(
    live_server, role_users, some_data
):
    headers = {"Authorization": f"Token {make_api_key(role_users['admin'])}"}
    # The schema needs a login too (API_DOCS_PUBLIC is off).
    schema = schemathesis.openapi.from_url(
        f"{live_server.url}/api/schema/?format=json", headers=headers
    )
    failures, operations = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        # Derandomized: the same cases every run, so this test never flakes.
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  derandomize=True, suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case):
            response = case.call(base_url=live_server.url, headers=headers)
            case.validate_response(response, checks=CHECKS)

        try:
            check()
        except Exception as failure:  # collect them all, then report
            failures.append(f"{operation.label}: {failure}")
    assert operations >= 25, f"the schema lists only {operations} operations"
    assert not failures, "\n\n".join(failures)
