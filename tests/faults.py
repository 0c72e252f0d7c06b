"""Faults injected at a chosen step by a database trigger on that step's statement.

A fault is armed by creating a sequence, and fires once: nextval() is not undone when
the faulted transaction aborts. "kill" terminates every connection of the scheduler's
processes (nodes and workers, the faulted one included); "stall" writes a marker file
named after the step into the configured folder and holds the statement until the test
restarts the server (or gives up after a minute); "hold" writes the marker and holds
the statement for two seconds, long enough for the test to pause the process waiting on
it.

Steps: claim (a fire recorded by a node), worker_claim (a worker taking a published
run), take_lock and release_lock (a job lock), record (a run's result written).
"""

from __future__ import annotations

from pathlib import Path

INSTALL_SQL = """
CREATE TABLE test_fault_config (dir text NOT NULL);
CREATE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kill_seq text := 'test_fault_' || TG_ARGV[0] || '_kill';
    stall_seq text := 'test_fault_' || TG_ARGV[0] || '_stall';
    hold_seq text := 'test_fault_' || TG_ARGV[0] || '_hold';
BEGIN
    IF to_regclass(kill_seq) IS NOT NULL AND nextval(kill_seq) = 1 THEN
        PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE (application_name LIKE 'node:%' OR application_name LIKE 'worker:%')
          AND pid <> pg_backend_pid();
        PERFORM pg_terminate_backend(pg_backend_pid());
        PERFORM pg_sleep(5);
    END IF;
    IF to_regclass(stall_seq) IS NOT NULL AND nextval(stall_seq) = 1 THEN
        EXECUTE format('COPY (SELECT 1) TO %L',
                       (SELECT dir FROM test_fault_config) || '/' || TG_ARGV[0]);
        PERFORM pg_sleep(60);
    END IF;
    IF to_regclass(hold_seq) IS NOT NULL AND nextval(hold_seq) = 1 THEN
        EXECUTE format('COPY (SELECT 1) TO %L',
                       (SELECT dir FROM test_fault_config) || '/' || TG_ARGV[0]);
        PERFORM pg_sleep(2);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fault_claim BEFORE INSERT ON jobs_execution FOR EACH ROW
    WHEN (NEW.origin = 'schedule' AND NEW.state <> 'skipped')
    EXECUTE FUNCTION test_fault('claim');
CREATE TRIGGER fault_worker_claim BEFORE UPDATE ON jobs_execution FOR EACH ROW
    WHEN (OLD.state = 'dispatched' AND NEW.state = 'running' AND NEW.node LIKE 'worker:%')
    EXECUTE FUNCTION test_fault('worker_claim');
CREATE TRIGGER fault_take_lock BEFORE INSERT ON locks_lock FOR EACH ROW
    WHEN (NEW.name LIKE 'job:%') EXECUTE FUNCTION test_fault('take_lock');
CREATE TRIGGER fault_release_lock BEFORE UPDATE ON locks_lock FOR EACH ROW
    WHEN (OLD.holder <> '' AND NEW.holder = '' AND NEW.token = OLD.token)
    EXECUTE FUNCTION test_fault('release_lock');
CREATE TRIGGER fault_record BEFORE UPDATE ON jobs_execution FOR EACH ROW
    WHEN (OLD.state = 'running' AND NEW.state IN ('succeeded', 'failed'))
    EXECUTE FUNCTION test_fault('record');
"""

STEPS = ("claim", "worker_claim", "take_lock", "release_lock", "record")
KINDS = ("kill", "stall", "hold")


def uninstall_sql() -> str:
    sequences = ", ".join(f"test_fault_{step}_{kind}" for step in STEPS for kind in KINDS)
    return (
        "DROP TRIGGER IF EXISTS fault_claim ON jobs_execution;"
        "DROP TRIGGER IF EXISTS fault_worker_claim ON jobs_execution;"
        "DROP TRIGGER IF EXISTS fault_record ON jobs_execution;"
        "DROP TRIGGER IF EXISTS fault_take_lock ON locks_lock;"
        "DROP TRIGGER IF EXISTS fault_release_lock ON locks_lock;"
        "DROP FUNCTION IF EXISTS test_fault();"
        "DROP TABLE IF EXISTS test_fault_config;"
        f"DROP SEQUENCE IF EXISTS {sequences};"
    )


def install(execute, marker_dir: Path) -> None:
    """Install the fault triggers with ``execute(sql, params)`` (markers go to marker_dir,
    which the database server must be able to write)."""
    execute(INSTALL_SQL, None)
    execute("INSERT INTO test_fault_config VALUES (%s)", [str(marker_dir)])


def arm(execute, step: str, kind: str) -> None:
    assert step in STEPS and kind in KINDS
    execute(f"CREATE SEQUENCE test_fault_{step}_{kind}", None)


def killed(fetch, step: str) -> bool:
    """Whether the armed "kill" fault of ``step`` has fired (``fetch(sql)`` returns rows)."""
    return fetch(f"SELECT is_called FROM test_fault_{step}_kill")[0][0]


def stalled(marker_dir: Path, step: str) -> bool:
    """Whether the armed "stall" or "hold" fault of ``step`` has fired."""
    return (marker_dir / step).exists()


def on_test_database(sql: str, params=None) -> list[tuple] | None:
    """``execute`` and ``fetch`` for the functions above, on the test database of an
    in-process test (Django's connection)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else None
