"""Wake sleeping scheduler nodes with NOTIFY when work may have become due sooner.

Done in the database so that every writer (admin, API, plain SQL) wakes the nodes.
A node advancing next_fire_at after a claim does not notify: that only makes work
later, and would wake every other node on every fire.
"""

from django.db import migrations

CREATE = """
CREATE FUNCTION jobs_notify_wakeup() RETURNS trigger AS $$
BEGIN
    -- Identical notifications in one transaction are delivered once.
    PERFORM pg_notify('jobs_wakeup', '');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER trigger_inserted_wakeup AFTER INSERT ON jobs_trigger
    FOR EACH ROW WHEN (NEW.next_fire_at IS NOT NULL AND NOT NEW.paused)
    EXECUTE FUNCTION jobs_notify_wakeup();

CREATE TRIGGER trigger_sooner_wakeup AFTER UPDATE OF next_fire_at, paused ON jobs_trigger
    FOR EACH ROW WHEN (
        NEW.next_fire_at IS NOT NULL AND NOT NEW.paused
        AND (OLD.paused OR OLD.next_fire_at IS NULL OR NEW.next_fire_at < OLD.next_fire_at)
    )
    EXECUTE FUNCTION jobs_notify_wakeup();

CREATE TRIGGER job_resumed_wakeup AFTER UPDATE OF paused ON jobs_job
    FOR EACH ROW WHEN (OLD.paused AND NOT NEW.paused)
    EXECUTE FUNCTION jobs_notify_wakeup();

CREATE TRIGGER execution_pending_inserted_wakeup AFTER INSERT ON jobs_execution
    FOR EACH ROW WHEN (NEW.state = 'pending')
    EXECUTE FUNCTION jobs_notify_wakeup();

CREATE TRIGGER execution_pending_again_wakeup AFTER UPDATE OF state ON jobs_execution
    FOR EACH ROW WHEN (NEW.state = 'pending' AND OLD.state <> 'pending')
    EXECUTE FUNCTION jobs_notify_wakeup();
"""

DROP = """
DROP TRIGGER IF EXISTS execution_pending_again_wakeup ON jobs_execution;
DROP TRIGGER IF EXISTS execution_pending_inserted_wakeup ON jobs_execution;
DROP TRIGGER IF EXISTS job_resumed_wakeup ON jobs_job;
DROP TRIGGER IF EXISTS trigger_sooner_wakeup ON jobs_trigger;
DROP TRIGGER IF EXISTS trigger_inserted_wakeup ON jobs_trigger;
DROP FUNCTION IF EXISTS jobs_notify_wakeup();
"""


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]

    operations = [migrations.RunSQL(CREATE, DROP)]
