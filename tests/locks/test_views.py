"""The locks and nodes pages, force release and stale-lock cleanup, for every role."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import pytest
from django.urls import reverse

from controlplane.models import AuditEntry
from jobs.models import Execution, database_now
from locks.models import Lock, SchedulerNode
from tests.jobs.factories import make_job

pytestmark = pytest.mark.django_db

ROLES = ["viewer", "operator", "admin"]
OPERATORS = ["operator", "admin"]
HTMX = {"HX-Request": "true"}


def held_lock(name, holder="worker-9", expires_in: float = 300, token=7, **fields) -> Lock:
    """A lock row held by ``holder`` whose lease ends ``expires_in`` s from database now."""
    now = database_now()
    return Lock.objects.create(
        name=name, holder=holder, token=token, locked_at=now - timedelta(minutes=1),
        locked_until=now + timedelta(seconds=expires_in), **fields,
    )  # fmt: skip


def free_lock(name, token=3) -> Lock:
    return Lock.objects.create(name=name, holder="", token=token, locked_until=database_now())


def release_url(name: str) -> str:
    # The whole name as one percent-encoded path segment, as the pages link it.
    return reverse("lock-release", args=["-"])[:-1] + quote(name, safe="")


def unchanged(lock: Lock) -> bool:
    row = Lock.objects.get(name=lock.name)
    return (row.holder, row.token) == (lock.holder, lock.token)


# --- the locks page ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/locks/", "/nodes/", release_url("a")])
def test_it_redirects_anonymous_users_to_login(client_for, url):
    response = client_for(None).get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("role", ROLES)
def test_every_role_sees_the_locks_page(client_for, role):
    held_lock("reports")
    response = client_for(role).get("/locks/")
    assert response.status_code == 200
    assert b"reports" in response.content


def test_it_shows_holder_liveness_held_since_expiry_token_execution_and_stale_reason(client_for):
    job = make_job("j")
    execution = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="manual", state="running", node="alive"
    )
    SchedulerNode.objects.create(id="alive", hostname="h", pid=1)
    SchedulerNode.objects.create(id="gone", hostname="h", pid=2, state="dead")
    held_lock("healthy", "alive", 300, token=11, execution=execution)
    held_lock("dead-holder", "gone", 300)
    held_lock("expired", "some-worker", -90)

    page = client_for("viewer").get("/locks/").content.decode()

    assert "node active" in page and "node dead" in page
    assert "not a scheduler node" in page
    assert "in 5m" in page  # 300 s of lease left, in database time
    assert "expired 1m 30s ago" in page
    assert ">11<" in page
    assert f'href="/executions/{execution.pk}/"' in page
    assert "holder node gone is dead" in page
    assert "expired 1m 30s ago and never released" in page  # the stale reason
    assert page.count('class="badge stale">stale<') == 2


def test_it_shows_held_and_stale_locks_by_default_and_all_locks_on_request(client_for):
    held_lock("busy")
    held_lock("stuck", expires_in=-60)
    free_lock("idle")
    client = client_for("viewer")

    default = client.get("/locks/").content.decode()
    everything = client.get("/locks/?all=1").content.decode()

    assert "busy" in default and "stuck" in default and "idle" not in default
    assert 'href="/locks/?all=1"' in default
    assert "busy" in everything and "stuck" in everything and "idle" in everything
    assert ">free<" in everything


def test_it_shows_one_lock_by_name_whatever_its_state(client_for):
    free_lock("idle")
    held_lock("busy")
    page = client_for("viewer").get("/locks/?name=idle").content.decode()
    assert "<code>idle</code>" in page and "<code>busy</code>" not in page


def test_an_htmx_request_gets_only_the_lock_table(client_for):
    held_lock("busy")
    response = client_for("viewer").get("/locks/?all=1", headers=HTMX)
    content = response.content.decode()
    assert content.lstrip().startswith('<div id="locks"')
    assert "<html" not in content and "busy" in content
    assert "HX-Request" in response["Vary"]


def test_the_viewer_sees_no_action_buttons(client_for):
    held_lock("busy")
    held_lock("stuck", expires_in=-60)
    page = client_for("viewer").get("/locks/").content.decode()
    assert "Force release" not in page
    assert release_url("busy") not in page
    assert "Clean up stale locks" not in page
    assert reverse("lock-cleanup") not in page


@pytest.mark.parametrize("role", OPERATORS)
def test_operators_see_the_action_buttons_for_held_locks_only(client_for, role):
    held_lock("busy")
    free_lock("idle")
    page = client_for(role).get("/locks/?all=1").content.decode()
    assert f'href="{release_url("busy")}?all=1"' in page
    assert release_url("idle") not in page
    assert "Clean up stale locks" in page


def test_holder_and_names_with_html_render_escaped(client_for):
    held_lock("<i>name</i>", holder="<script>alert(1)</script>", expires_in=-5)
    page = client_for("operator").get("/locks/").content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<i>name</i>" not in page and "&lt;i&gt;name&lt;/i&gt;" in page


# --- force release ----------------------------------------------------------------------


@pytest.mark.parametrize("role", OPERATORS)
def test_operators_get_the_confirmation_with_a_required_reason(client_for, role):
    held_lock("stuck")
    response = client_for(role).get(release_url("stuck"))
    page = response.content.decode()
    assert response.status_code == 200
    assert 'name="reason"' in page and "required" in page
    assert f'action="{release_url("stuck")}"' in page
    assert Lock.objects.get(name="stuck").holder == "worker-9"


def test_the_confirmation_is_inline_for_htmx(client_for):
    held_lock("stuck")
    page = client_for("operator").get(release_url("stuck"), headers=HTMX).content.decode()
    assert "<html" not in page
    assert f'hx-post="{release_url("stuck")}"' in page


def test_the_confirmation_of_an_unknown_lock_is_404(client_for):
    assert client_for("operator").get(release_url("nope")).status_code == 404


@pytest.mark.parametrize("role", OPERATORS)
def test_operators_force_release_a_lock_and_it_is_audited(client_for, role, role_users):
    lock = held_lock("stuck", holder="worker-9", token=7)
    client = client_for(role)

    response = client.post(release_url("stuck"), {"reason": "worker-9 hung"})

    assert response.status_code == 302 and response["Location"] == "/locks/"
    row = Lock.objects.get(name="stuck")
    assert row.holder == "" and row.token == lock.token + 1
    entry = AuditEntry.objects.get()
    assert (entry.user, entry.actor, entry.action) == (
        role_users[role], role_users[role].username, "lock.force_release"
    )  # fmt: skip
    assert (entry.object_type, entry.object_id, entry.reason) == ("lock", "stuck", "worker-9 hung")
    page = client.get(response["Location"]).content.decode()
    assert "Released stuck: it was held by worker-9 with token 7; the token is now 8." in page


def test_force_release_by_htmx_returns_the_refreshed_table_with_the_message(client_for):
    held_lock("stuck", holder="worker-9", token=7)
    free_lock("idle")
    response = client_for("operator").post(
        release_url("stuck"), {"reason": "hung", "all": "1"}, headers=HTMX
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert response["HX-Retarget"] == "#locks" and response["HX-Reswap"] == "outerHTML"
    assert page.lstrip().startswith('<div id="locks"')
    assert "Released stuck: it was held by worker-9 with token 7" in page
    assert "idle" in page  # the "show all" choice survives the action
    assert Lock.objects.get(name="stuck").holder == ""


def test_the_viewer_cannot_force_release(client_for):
    lock = held_lock("stuck")
    client = client_for("viewer")
    assert client.get(release_url("stuck")).status_code == 403
    assert client.post(release_url("stuck"), {"reason": "because"}).status_code == 403
    assert unchanged(lock)
    assert not AuditEntry.objects.exists()


def test_anonymous_force_release_is_redirected_to_login_and_changes_nothing(client_for):
    lock = held_lock("stuck")
    response = client_for(None).post(release_url("stuck"), {"reason": "because"})
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert unchanged(lock)
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize("reason", ["", "   "])
def test_force_release_without_a_reason_changes_nothing_and_says_why(client_for, reason):
    lock = held_lock("stuck")
    response = client_for("operator").post(release_url("stuck"), {"reason": reason})
    assert response.status_code == 200
    assert "A reason is required to force-release a lock." in response.content.decode()
    assert unchanged(lock)
    assert not AuditEntry.objects.exists()


def test_force_release_without_a_reason_by_htmx_shows_the_error_in_the_form(client_for):
    lock = held_lock("stuck")
    response = client_for("operator").post(release_url("stuck"), {"reason": ""}, headers=HTMX)
    page = response.content.decode()
    assert "A reason is required" in page and '<form class="release"' in page
    assert "HX-Retarget" not in response
    assert unchanged(lock)


def test_force_release_of_a_lock_nobody_holds_shows_a_clear_error(client_for):
    lock = free_lock("idle")
    response = client_for("operator").post(
        release_url("idle"), {"reason": "just in case"}, follow=True
    )
    page = response.content.decode()
    assert "Nothing released: lock &#x27;idle&#x27; is not held (token 3)." in page
    assert unchanged(lock)
    assert not AuditEntry.objects.exists()


def test_force_release_of_an_unknown_lock_shows_a_clear_error(client_for):
    response = client_for("operator").post(release_url("nope"), {"reason": "x"}, follow=True)
    assert "Nothing released: there is no lock named &#x27;nope&#x27;." in response.content.decode()
    assert not AuditEntry.objects.exists()


def test_the_confirmation_of_a_free_lock_says_there_is_nothing_to_release(client_for):
    free_lock("idle")
    page = client_for("operator").get(release_url("idle")).content.decode()
    assert "This lock is not held" in page and 'name="reason"' not in page


@pytest.mark.parametrize(
    "name, message",
    [("decoy/../victim", "may be empty"), ("a b", "use letters"), ("x" * 201, "at most 200")],
)
def test_a_name_no_lock_may_have_is_400_and_releases_nothing(client_for, name, message):
    victim = held_lock("victim", token=4)
    client = client_for("operator")
    for response in [
        client.get(release_url(name)),
        client.post(release_url(name), {"reason": "stuck"}),
        client.get("/locks/", {"name": name}),
        client.get("/locks/", {"after": name}),
    ]:
        assert response.status_code == 400
        assert message in response.content.decode()
    assert unchanged(victim)
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize("url", ["/locks/?name=a%00b", "/locks/?after=%00", "/locks/release/a%00b"])
def test_a_nul_byte_is_400(client_for, url):
    client = client_for("operator")
    assert client.get(url).status_code == 400
    assert client.post(url, {"reason": "r"}).status_code == 400


def test_a_lock_name_with_colons_and_slashes_works(client_for):
    name = "reports:eu/nightly:2024/05"
    lock = held_lock(name, token=4)
    client = client_for("operator")
    assert release_url(name) == "/locks/release/reports%3Aeu%2Fnightly%3A2024%2F05"

    page = client.get("/locks/").content.decode()
    assert f'href="{release_url(name)}"' in page
    assert client.get(release_url(name)).status_code == 200

    response = client.post(release_url(name), {"reason": "stuck"}, follow=True)
    assert f"Released {name}: it was held by worker-9 with token 4" in response.content.decode()
    assert Lock.objects.get(name=name).token == lock.token + 1
    assert AuditEntry.objects.get().object_id == name


def test_the_success_message_escapes_a_holder_with_html(client_for):
    held_lock("stuck", holder="<b>evil</b>")
    page = (
        client_for("operator")
        .post(release_url("stuck"), {"reason": "x"}, follow=True)
        .content.decode()
    )
    assert "<b>evil</b>" not in page and "held by &lt;b&gt;evil&lt;/b&gt;" in page


# --- clean up stale locks ---------------------------------------------------------------


@pytest.fixture
def stale_and_healthy():
    SchedulerNode.objects.create(id="gone", hostname="h", pid=2, state="dead")
    return {
        "stale": [held_lock("dead-holder", "gone"), held_lock("expired", "w", expires_in=-30)],
        "healthy": held_lock("healthy", "w", expires_in=300),
    }


@pytest.mark.parametrize("role", OPERATORS)
def test_operators_clean_up_stale_locks_and_each_is_audited(
    client_for, role, role_users, stale_and_healthy
):
    client = client_for(role)
    response = client.post(reverse("lock-cleanup"), {"reason": "after the outage"})
    assert response.status_code == 302 and response["Location"] == "/locks/"
    assert not Lock.objects.filter(name__in=["dead-holder", "expired"]).exclude(holder="")
    assert unchanged(stale_and_healthy["healthy"])
    entries = AuditEntry.objects.order_by("object_id")
    assert [e.object_id for e in entries] == ["dead-holder", "expired"]
    assert {(e.user, e.action, e.reason) for e in entries} == {
        (role_users[role], "lock.cleanup_stale", "after the outage")
    }
    page = client.get("/locks/").content.decode()
    message = page.split("Released 2 stale locks: ")[1].split(".</li>")[0]
    assert sorted(message.split(", ")) == ["dead-holder", "expired"]


def test_cleanup_without_a_reason_records_the_default_one(client_for, stale_and_healthy):
    client_for("operator").post(reverse("lock-cleanup"), {"reason": "  "})
    assert set(AuditEntry.objects.values_list("reason", flat=True)) == {
        "stale lock cleanup from the dashboard"
    }


def test_cleanup_with_nothing_stale_says_so(client_for):
    lock = held_lock("healthy")
    response = client_for("operator").post(reverse("lock-cleanup"), follow=True)
    assert "There was no stale lock to release." in response.content.decode()
    assert unchanged(lock) and not AuditEntry.objects.exists()


def test_cleanup_by_htmx_returns_the_refreshed_table(client_for, stale_and_healthy):
    response = client_for("operator").post(reverse("lock-cleanup"), headers=HTMX)
    page = response.content.decode()
    assert page.lstrip().startswith('<div id="locks"')
    assert "Released 2 stale locks" in page
    table = page.split("</ul>")[1]
    assert "<code>healthy</code>" in table and "<code>expired</code>" not in table


def test_the_viewer_cannot_clean_up(client_for, stale_and_healthy):
    response = client_for("viewer").post(reverse("lock-cleanup"))
    assert response.status_code == 403
    assert all(unchanged(lock) for lock in stale_and_healthy["stale"])
    assert not AuditEntry.objects.exists()


def test_anonymous_cleanup_is_redirected_to_login_and_changes_nothing(
    client_for, stale_and_healthy
):
    response = client_for(None).post(reverse("lock-cleanup"))
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert all(unchanged(lock) for lock in stale_and_healthy["stale"])
    assert not AuditEntry.objects.exists()


def test_cleanup_only_accepts_post(client_for):
    assert client_for("operator").get(reverse("lock-cleanup")).status_code == 405


# --- nodes ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_every_role_sees_the_nodes_page(client_for, role):
    SchedulerNode.objects.create(id="n1", hostname="box", pid=41, version="1.2.3")
    response = client_for(role).get("/nodes/")
    assert response.status_code == 200
    assert b"n1" in response.content and b"box" in response.content


def test_the_nodes_page_shows_each_node_live_first_with_its_running_executions(client_for):
    now = database_now()
    SchedulerNode.objects.create(
        id="old-dead", hostname="a", pid=1, state="dead", declared_dead_by="live-b",
        last_heartbeat=now - timedelta(minutes=10), started_at=now - timedelta(hours=2),
    )  # fmt: skip
    SchedulerNode.objects.create(
        id="live-b", hostname="b", pid=2, version="9.9", last_heartbeat=now - timedelta(seconds=3)
    )
    job = make_job("j")
    running = [
        Execution.objects.create(
            job=job, scheduled_for=now, origin="manual", state=state, node=node
        )
        for state, node in [("running", "live-b"), ("dispatched", "live-b"),
                            ("succeeded", "live-b"), ("running", "elsewhere")]
    ]  # fmt: skip

    page = client_for("viewer").get("/nodes/").content.decode()

    assert page.index("live-b") < page.index("old-dead")
    assert "3s ago" in page and "10m ago" in page
    assert "9.9" in page and ">live-b<" in page  # declared dead by
    assert 'href="/executions/?node=live-b">2<' in page
    assert f'href="/executions/{running[0].pk}/"' in page
    assert f'href="/executions/{running[1].pk}/"' in page
    assert f'href="/executions/{running[2].pk}/"' not in page
    assert f'href="/executions/{running[3].pk}/"' not in page


def test_the_nodes_table_alone_answers_htmx_polling(client_for):
    SchedulerNode.objects.create(id="n1", hostname="box", pid=41)
    page = client_for("viewer").get("/nodes/", headers=HTMX).content.decode()
    assert "<html" not in page and 'hx-trigger="every 5s"' in page and "n1" in page


def test_a_user_without_a_role_cannot_see_locks_or_nodes(client, django_user_model):
    user = django_user_model.objects.create_user("nobody", password="pw")
    client.force_login(user)
    assert client.get("/locks/").status_code == 403
    assert client.get("/nodes/").status_code == 403
