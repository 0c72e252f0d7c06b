"""The locks and nodes API for anonymous users, each role and an operator's token.

Reads need the view permission; force release and stale cleanup the operator's. Every
action is audited with the user behind the request, the token's user included.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from io import StringIO
from urllib.parse import quote

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from controlplane.models import AuditEntry
from jobs.models import Execution, database_now
from locks.leases import LockLost, acquire
from locks.models import Lock, SchedulerNode
from tests.conftest import make_api_key
from tests.jobs.factories import make_job

pytestmark = pytest.mark.django_db

LOCKS = "/api/v1/locks/"
NODES = "/api/v1/nodes/"
CLEANUP = "/api/v1/locks/cleanup_stale/"
#: The roles that may read, and "token": an operator authenticated by API token.
READERS = ["viewer", "operator", "admin", "token"]
OPERATORS = ["operator", "admin", "token"]
NAMES = "billing:invoices/eu"


@pytest.fixture
def api_for(role_users):
    """api_for("operator") -> an APIClient for that role (None: anonymous).

    The roles log in with a session, as the browser does; "token" is the operator
    (otto) with a token made by `create_api_token`, as a machine would be.
    """

    def make(role: str | None, **kwargs) -> APIClient:
        client = APIClient(**kwargs)
        if role == "token":
            out = StringIO()
            call_command("create_api_token", role_users["operator"].username, stdout=out)
            client.credentials(HTTP_AUTHORIZATION=f"Token {out.getvalue().strip()}")
        elif role is not None:
            client.force_login(role_users[role])
        return client

    return make


def user_of(role: str, role_users):
    return role_users["operator" if role == "token" else role]


def held_lock(name, holder="worker-9", expires_in: float = 300, token=7, **fields) -> Lock:
    """A lock held by ``holder`` whose lease ends ``expires_in`` s from database now."""
    now = database_now()
    return Lock.objects.create(
        name=name, holder=holder, token=token, locked_at=now - timedelta(minutes=1),
        locked_until=now + timedelta(seconds=expires_in), last_extended_at=now, **fields,
    )  # fmt: skip


def free_lock(name, token=3) -> Lock:
    return Lock.objects.create(name=name, holder="", token=token, locked_until=database_now())


def state_of(name: str) -> tuple[str, int]:
    lock = Lock.objects.get(name=name)
    return lock.holder, lock.token


def lock_audits():
    """Audit entries about locks (making an API token is audited too)."""
    return AuditEntry.objects.filter(object_type="lock")


def force_release_url(name: str) -> str:
    return f"{LOCKS}{name}/force_release/"


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- who may do what --------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, url",
    [
        ("get", LOCKS),
        ("get", f"{LOCKS}{NAMES}/"),
        ("post", force_release_url(NAMES)),
        ("post", CLEANUP),
        ("get", NODES),
        ("get", f"{NODES}n1/"),
    ],
)
def test_anonymous_requests_get_401_with_a_token_challenge_and_change_nothing(api_for, method, url):
    held_lock(NAMES, expires_in=-60)
    SchedulerNode.objects.create(id="n1", hostname="h", pid=1)

    client = api_for(None)
    if method == "get":
        response = client.get(url)
    else:
        response = client.post(url, {"reason": "r"}, format="json")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "detail" in response.json()
    assert state_of(NAMES) == ("worker-9", 7)
    assert not lock_audits().exists()


def test_a_bad_token_gets_401(api_for):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-key")
    response = client.get(LOCKS)
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token."}


def test_a_rotated_away_token_gets_401(api_for, role_users):
    client = api_for("token")
    call_command("create_api_token", "otto", "--rotate", stdout=StringIO(), stderr=StringIO())
    assert client.get(LOCKS).status_code == 401


@pytest.mark.parametrize("role", ["viewer", "token-of-viewer"])
def test_the_viewer_cannot_force_release_or_clean_up(api_for, role_users, role):
    held_lock("stuck", expires_in=-60)
    if role == "viewer":
        client = api_for("viewer")
    else:  # a token carries its user's role, no more
        client = APIClient()
        key = make_api_key(role_users["viewer"])
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")

    released = client.post(force_release_url("stuck"), {"reason": "r"}, format="json")
    cleaned = client.post(CLEANUP, {}, format="json")

    assert released.status_code == 403 and cleaned.status_code == 403
    assert "detail" in released.json() and "detail" in cleaned.json()
    assert state_of("stuck") == ("worker-9", 7)
    assert not lock_audits().exists()


@pytest.mark.parametrize("role", READERS)
@pytest.mark.parametrize(
    "method, url",
    [
        ("post", LOCKS),
        ("put", f"{LOCKS}busy/"),
        ("patch", f"{LOCKS}busy/"),
        ("delete", f"{LOCKS}busy/"),
        ("post", NODES),
        ("delete", f"{NODES}n1/"),
    ],
)
def test_locks_and_nodes_are_read_only_for_every_role(api_for, role, method, url):
    held_lock("busy")
    SchedulerNode.objects.create(id="n1", hostname="h", pid=1)
    body = {"name": "busy", "holder": "me", "token": 99, "id": "n1", "state": "dead"}

    response = getattr(api_for(role), method)(url, body, format="json")

    assert response.status_code in (403, 405)
    assert state_of("busy") == ("worker-9", 7)
    assert SchedulerNode.objects.get(id="n1").state == "active"
    assert Lock.objects.count() == 1 and SchedulerNode.objects.count() == 1


def test_a_session_needs_a_csrf_token_to_act_but_a_token_request_does_not(api_for):
    held_lock("a")
    held_lock("b")

    session = api_for("operator", enforce_csrf_checks=True)
    refused = session.post(force_release_url("a"), {"reason": "r"}, format="json")
    token = api_for("token", enforce_csrf_checks=True)
    accepted = token.post(force_release_url("b"), {"reason": "r"}, format="json")

    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert state_of("a") == ("worker-9", 7)
    assert accepted.status_code == 200 and state_of("b") == ("", 8)


# --- listing and reading locks ------------------------------------------------------------


@pytest.mark.parametrize("role", READERS)
def test_every_reader_lists_held_and_stale_locks_by_default_and_all_on_request(api_for, role):
    held_lock("busy")
    held_lock("stuck", expires_in=-60)
    free_lock("idle")
    client = api_for(role)

    default = client.get(LOCKS)
    everything = client.get(LOCKS, {"all": "true"})

    assert default.status_code == 200 and everything.status_code == 200
    assert [lock["name"] for lock in default.json()["results"]] == ["busy", "stuck"]
    assert [lock["name"] for lock in everything.json()["results"]] == ["busy", "idle", "stuck"]
    assert default.json()["next"] is None


def test_a_lock_shows_its_lease_holder_liveness_and_staleness_in_database_time(api_for):
    job = make_job("j")
    execution = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="manual", state="running", node="alive"
    )
    SchedulerNode.objects.create(id="alive", hostname="h", pid=1)
    SchedulerNode.objects.create(id="gone", hostname="h", pid=2, state="dead")
    healthy = held_lock("healthy", "alive", 300, token=11, execution=execution)
    held_lock("dead-holder", "gone", 300)
    held_lock("expired", "some-worker", -90)
    free_lock("idle")
    client = api_for("viewer")

    body = client.get(f"{LOCKS}healthy/").json()
    dead = client.get(f"{LOCKS}dead-holder/").json()
    expired = client.get(f"{LOCKS}expired/").json()
    idle = client.get(f"{LOCKS}idle/").json()

    assert set(body) == {
        "name", "holder", "holder_state", "locked_at", "locked_until", "expires_in_seconds",
        "token", "execution_id", "last_extended_at", "held", "stale", "stale_reason",
    }  # fmt: skip
    assert body["name"] == "healthy" and body["holder"] == "alive"
    assert body["holder_state"] == "active"
    assert when(body["locked_at"]) == healthy.locked_at
    assert when(body["locked_until"]) == healthy.locked_until
    assert when(body["last_extended_at"]) == healthy.last_extended_at
    assert body["expires_in_seconds"] == 300.0  # the lease's end minus PostgreSQL's now()
    assert (body["token"], body["execution_id"]) == (11, execution.pk)
    assert (body["held"], body["stale"], body["stale_reason"]) == (True, False, None)

    assert dead["holder_state"] == "dead" and dead["stale"] is True
    assert dead["stale_reason"] == "holder node gone is dead"
    assert expired["holder_state"] is None  # not a scheduler node
    assert expired["expires_in_seconds"] == -90.0 and expired["held"] is True
    assert expired["stale_reason"] == "expired 1m 30s ago and never released"
    assert idle["holder"] == "" and idle["holder_state"] is None
    assert (idle["held"], idle["stale"], idle["stale_reason"]) == (False, False, None)
    assert idle["locked_at"] is None and idle["execution_id"] is None


def test_a_lock_row_that_never_had_a_lease_is_free(api_for):
    Lock.objects.create(name="blank")
    body = api_for("viewer").get(f"{LOCKS}blank/").json()
    assert (body["held"], body["stale"], body["expires_in_seconds"]) == (False, False, None)
    assert body["locked_until"] is None and body["holder_state"] is None


@pytest.mark.parametrize(
    "url",
    [
        f"{LOCKS}{NAMES}/",
        f"{LOCKS}billing%3Ainvoices%2Feu/",  # percent-encoded, as most HTTP clients send it
    ],
)
def test_a_lock_named_with_colons_and_slashes_is_found(api_for, url):
    held_lock(NAMES)
    held_lock("billing:invoices")
    response = api_for("viewer").get(url)
    assert response.status_code == 200
    assert response.json()["name"] == NAMES


@pytest.mark.parametrize("name", ["reports.daily", "force_release", "a/force_release/b", "a@b+c=d"])
def test_names_with_dots_and_route_words_and_reserved_characters_are_found(api_for, name):
    held_lock(name)
    response = api_for("viewer").get(f"{LOCKS}{quote(name)}/")
    assert response.status_code == 200
    assert response.json()["name"] == name


def test_an_unknown_lock_is_404_naming_the_name(api_for):
    response = api_for("viewer").get(f"{LOCKS}nope/")
    assert response.status_code == 404
    assert response.json() == {"name": ["there is no lock named 'nope'"]}


@pytest.mark.parametrize(
    "path, message",
    [
        ("decoy/../victim", "may be empty"),
        ("a//b", "may be empty"),
        ("./a", "may be empty"),
        ("%25x%3F%23", "use letters, digits"),
        ("caf%C3%A9", "use letters, digits"),
        ("x" * 201, "at most 200"),
    ],
)
def test_a_path_that_is_no_lock_name_is_400_naming_name_and_changes_nothing(api_for, path, message):
    held_lock("victim")
    client = api_for("operator")
    for response in [
        client.get(f"{LOCKS}{path}/"),
        client.post(f"{LOCKS}{path}/force_release/", {"reason": "r"}, format="json"),
    ]:
        assert response.status_code == 400
        assert message in response.json()["name"][0]
    assert state_of("victim")[0] == "worker-9"
    assert not lock_audits().exists()


@pytest.mark.parametrize("url", [f"{LOCKS}nul%00byte/", f"{LOCKS}nul%00byte/force_release/"])
def test_a_nul_byte_in_the_path_is_400(api_for, url):
    response = api_for("operator").post(url, {"reason": "r"}, format="json")
    assert response.status_code == 400
    assert "NUL" in response.json()["detail"]


@pytest.mark.parametrize("value", ["maybe", ""])
def test_a_bad_all_flag_is_400_naming_it(api_for, value):
    response = api_for("viewer").get(LOCKS, {"all": value})
    assert response.status_code == 400
    assert list(response.json()) == ["all"]


@pytest.mark.parametrize("url", [LOCKS, NODES])
@pytest.mark.parametrize("page_size", ["0", "501", "ten", ""])
def test_a_bad_page_size_is_400_naming_it(api_for, url, page_size):
    response = api_for("viewer").get(url, {"page_size": page_size})
    assert response.status_code == 400
    assert list(response.json()) == ["page_size"]


def test_the_lock_list_pages_by_name_with_a_cursor(api_for):
    for name in ["c", "a", "b"]:
        held_lock(name)
    client = api_for("viewer")

    first = client.get(LOCKS, {"page_size": 2}).json()
    second = client.get(first["next"]).json()

    assert [lock["name"] for lock in first["results"]] == ["a", "b"]
    assert [lock["name"] for lock in second["results"]] == ["c"]
    assert second["next"] is None and second["previous"] is not None
    response = client.get(LOCKS, {"cursor": "garbage"})
    assert response.status_code == 400 and list(response.json()) == ["cursor"]


# --- force release ------------------------------------------------------------------------


@pytest.mark.parametrize("role", OPERATORS)
def test_operators_and_their_token_force_release_a_lock_and_it_is_audited_with_their_user(
    api_for, role_users, role
):
    execution = Execution.objects.create(
        job=make_job("j"), scheduled_for=database_now(), origin="manual", state="running"
    )
    lock = held_lock(NAMES, holder="worker-9", token=7, execution=execution)

    response = api_for(role).post(
        force_release_url(NAMES), {"reason": "worker-9 hung"}, format="json"
    )

    assert response.status_code == 200
    body = response.json()
    assert body["name"] == NAMES
    assert body["after"] == {"holder": "", "token": 8}
    before = body["before"]
    assert (before["holder"], before["token"], before["execution_id"]) == (
        "worker-9", 7, execution.pk
    )  # fmt: skip
    assert before["locked_at"].endswith("Z")  # written like every other time
    assert when(before["locked_at"]) == lock.locked_at
    assert when(before["locked_until"]) == lock.locked_until
    row = Lock.objects.get(name=NAMES)
    assert (row.holder, row.token, row.execution_id) == ("", 8, None)
    entry = lock_audits().get()
    user = user_of(role, role_users)
    assert (entry.user, entry.actor, entry.action) == (user, user.username, "lock.force_release")
    assert (entry.object_type, entry.object_id, entry.reason) == ("lock", NAMES, "worker-9 hung")
    assert entry.before["token"] == 7 and entry.after == {"holder": "", "token": 8}


@pytest.mark.parametrize(
    "body",
    [
        {}, {"reason": ""}, {"reason": " \t\u3000\x1c"}, {"reason": None}, {"reason": 0},
        {"reason": "a\x00b"},
    ],
)  # fmt: skip
def test_force_release_without_a_reason_is_400_naming_reason(api_for, body):
    held_lock("stuck")
    response = api_for("operator").post(force_release_url("stuck"), body, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["reason"]
    assert state_of("stuck") == ("worker-9", 7)
    assert not lock_audits().exists()


@pytest.mark.parametrize("url", [force_release_url("stuck"), CLEANUP])
def test_a_reason_that_is_not_storable_text_is_400_naming_reason(api_for, url):
    held_lock("stuck", expires_in=-90)
    client = api_for("operator")
    # A lone surrogate, which no UTF-8 text (nor PostgreSQL) can hold.
    response = client.post(url, '{"reason": "\\ud800"}', content_type="application/json")
    assert response.status_code == 400 and list(response.json()) == ["reason"]
    assert state_of("stuck") == ("worker-9", 7)


@pytest.mark.parametrize("url", [force_release_url("stuck"), CLEANUP])
def test_the_actions_take_json_bodies_only(api_for, url):
    held_lock("stuck", expires_in=-90)
    response = api_for("operator").post(url, {"reason": "r"})  # multipart
    assert response.status_code == 415
    assert "detail" in response.json()
    assert state_of("stuck") == ("worker-9", 7)


@pytest.mark.parametrize("body", ["928", "[]", '"text"'])
def test_a_json_body_that_is_not_an_object_is_400(api_for, body):
    held_lock("stuck", expires_in=-90)
    client = api_for("operator")
    for url in [force_release_url("stuck"), CLEANUP]:
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 400 and list(response.json()) == ["non_field_errors"]
    assert state_of("stuck") == ("worker-9", 7)


def test_force_release_with_malformed_json_is_400(api_for):
    held_lock("stuck")
    response = api_for("operator").post(
        force_release_url("stuck"), "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]
    assert state_of("stuck") == ("worker-9", 7)


@pytest.mark.parametrize("name", ["nope"])
def test_force_release_of_an_unknown_lock_is_404_naming_the_name(api_for, name):
    response = api_for("token").post(force_release_url(name), {"reason": "typo"}, format="json")
    assert response.status_code == 404
    assert response.json() == {"name": [f"there is no lock named {name!r}"]}
    assert not lock_audits().exists()


def test_force_release_of_a_lock_nobody_holds_is_409_naming_the_name(api_for):
    free_lock("idle", token=3)
    response = api_for("operator").post(force_release_url("idle"), {"reason": "r"}, format="json")
    assert response.status_code == 409
    assert response.json() == {"name": ["lock 'idle' is not held (token 3)"]}
    assert state_of("idle") == ("", 3)
    assert not lock_audits().exists()


def test_force_releasing_twice_is_409_the_second_time(api_for):
    held_lock("stuck", token=7)
    client = api_for("token")

    first = client.post(force_release_url("stuck"), {"reason": "hung"}, format="json")
    second = client.post(force_release_url("stuck"), {"reason": "hung"}, format="json")

    assert first.status_code == 200
    assert second.status_code == 409 and list(second.json()) == ["name"]
    assert state_of("stuck") == ("", 8)
    assert lock_audits().count() == 1


@pytest.mark.django_db(transaction=True)
def test_after_a_force_release_through_the_api_the_old_lease_is_fenced_off(api_for):
    lease = acquire(NAMES, holder="worker-1", at_most=300)

    response = api_for("token").post(force_release_url(NAMES), {"reason": "wedged"}, format="json")

    assert response.status_code == 200
    assert response.json()["before"]["token"] == lease.token
    with pytest.raises(LockLost):
        lease.extend(10)
    with pytest.raises(LockLost):
        lease.release()
    successor = acquire(NAMES, holder="worker-2", at_most=10)
    assert successor is not None and successor.token == lease.token + 2


# --- stale lock cleanup -------------------------------------------------------------------


@pytest.mark.parametrize("role", OPERATORS)
def test_operators_and_their_token_clean_up_stale_locks_audited_with_their_user(
    api_for, role_users, role
):
    SchedulerNode.objects.create(id="alive", hostname="h", pid=1)
    SchedulerNode.objects.create(id="gone", hostname="h", pid=2, state="dead")
    held_lock("healthy", "alive", 300)
    held_lock("dead-node", "gone", 300, token=4)
    held_lock("expired", "some-worker", -90, token=5)

    response = api_for(role).post(CLEANUP, {"reason": "night shift tidy-up"}, format="json")

    assert response.status_code == 200
    released = {lock["name"]: lock for lock in response.json()["released"]}
    assert set(released) == {"dead-node", "expired"}
    assert released["dead-node"]["reason"] == "holder node gone is dead"
    assert released["dead-node"]["holder"] == "gone" and released["dead-node"]["token"] == 4
    assert released["expired"]["reason"] == "expired 1m 30s ago and never released"
    assert set(released["expired"]) == {
        "name", "holder", "token", "locked_at", "locked_until", "execution_id", "reason"
    }  # fmt: skip
    assert state_of("dead-node") == ("", 5) and state_of("expired") == ("", 6)
    assert state_of("healthy") == ("alive", 7)
    user = user_of(role, role_users)
    entries = lock_audits().filter(action="lock.cleanup_stale")
    assert {e.object_id for e in entries} == {"dead-node", "expired"}
    assert all(e.user == user and e.reason == "night shift tidy-up" for e in entries)


@pytest.mark.parametrize("body", [None, {}, {"reason": "  "}])
def test_cleanup_without_a_reason_records_a_default_one(api_for, body):
    held_lock("expired", expires_in=-90)
    response = api_for("operator").post(CLEANUP, body, format="json")
    assert response.status_code == 200
    assert lock_audits().get().reason == "stale lock cleanup through the API"


def test_cleanup_with_nothing_stale_releases_nothing(api_for):
    held_lock("healthy")
    response = api_for("operator").post(CLEANUP, {}, format="json")
    assert response.status_code == 200 and response.json() == {"released": []}
    assert not lock_audits().exists()


@pytest.mark.parametrize("reason", [["a", "b"], 0, None])
def test_cleanup_with_a_reason_that_is_not_text_is_400_naming_reason(api_for, reason):
    held_lock("expired", expires_in=-90)
    response = api_for("operator").post(CLEANUP, {"reason": reason}, format="json")
    assert response.status_code == 400 and list(response.json()) == ["reason"]
    assert state_of("expired") == ("worker-9", 7)


# --- nodes --------------------------------------------------------------------------------

NODE_ID = "web-1.example.com:4242:ab12"


@pytest.mark.parametrize("role", READERS)
def test_every_reader_sees_nodes_with_heartbeat_age_in_database_time_and_running_work(
    api_for, role
):
    now = database_now()
    SchedulerNode.objects.create(
        id=NODE_ID, hostname="web-1.example.com", pid=4242, version="1.2",
        started_at=now - timedelta(hours=1), last_heartbeat=now - timedelta(seconds=42),
    )  # fmt: skip
    SchedulerNode.objects.create(
        id="old:1:x", hostname="old", pid=1, state="dead", last_heartbeat=now - timedelta(hours=2),
        stopped_at=now - timedelta(hours=1), declared_dead_by=NODE_ID,
    )  # fmt: skip
    job = make_job("j")
    for state in ["dispatched", "running", "running", "succeeded", "pending"]:
        Execution.objects.create(
            job=job, scheduled_for=now, origin="manual", state=state, node=NODE_ID
        )
    client = api_for(role)

    listed = client.get(NODES)
    detail = client.get(f"{NODES}{NODE_ID}/")

    assert listed.status_code == 200 and detail.status_code == 200
    assert [n["id"] for n in listed.json()["results"]] == ["old:1:x", NODE_ID]
    node = detail.json()
    assert node == listed.json()["results"][1]
    assert node["hostname"] == "web-1.example.com" and node["pid"] == 4242
    assert node["version"] == "1.2" and node["state"] == "active"
    assert node["heartbeat_age_seconds"] == 42.0
    assert node["running_executions"] == 3
    assert when(node["started_at"]) == now - timedelta(hours=1)
    assert when(node["last_heartbeat"]) == now - timedelta(seconds=42)
    assert node["stopped_at"] is None and node["declared_dead_by"] == ""
    dead = listed.json()["results"][0]
    assert dead["state"] == "dead" and dead["declared_dead_by"] == NODE_ID
    assert dead["running_executions"] == 0 and dead["heartbeat_age_seconds"] == 7200.0


def test_nodes_filter_by_state(api_for):
    SchedulerNode.objects.create(id="a", hostname="h", pid=1)
    SchedulerNode.objects.create(id="b", hostname="h", pid=2, state="dead")
    client = api_for("viewer")

    active = client.get(NODES, {"state": "active"})
    bad = client.get(NODES, {"state": "zombie"})
    blank = client.get(NODES, {"state": ""})

    assert [n["id"] for n in active.json()["results"]] == ["a"]
    assert bad.status_code == 400 and list(bad.json()) == ["state"]
    assert blank.status_code == 400 and list(blank.json()) == ["state"]


@pytest.mark.parametrize("node_id", ["nope:1:x"])
def test_an_unknown_node_is_404_naming_the_id(api_for, node_id):
    response = api_for("viewer").get(f"{NODES}{node_id}/")
    assert response.status_code == 404
    assert response.json() == {"id": [f"there is no node with id {node_id!r}"]}
