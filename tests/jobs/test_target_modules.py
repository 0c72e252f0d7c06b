"""Job targets from outside the repository: the example package under examples/, loaded
through its entry point (installed) and through SCHEDULER_TARGET_MODULES (on the path),
run on a real node and a real Celery worker; and a module that cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jobs.models import Execution, queue_manual_run
from tests.conftest import ROOT, wait_for
from tests.jobs import test_celery
from tests.jobs.factories import make_job

EXAMPLE = ROOT / "examples" / "example-targets"

# The worker fixtures of the Celery tests: a queue of the test's own, real workers.
queue = test_celery.queue
start_worker = test_celery.start_worker


@pytest.fixture(scope="session")
def installed_example(tmp_path_factory):
    """The example package pip-installed (from its pyproject.toml, built with setuptools
    from PyPI) into a folder of its own: the processes that have the folder on their
    PYTHONPATH see it as installed, and the test venv stays as it was."""
    site = tmp_path_factory.mktemp("example-site")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
               "--target", str(site), str(EXAMPLE)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return site


MECHANISMS = {
    "entry point": lambda site: {"PYTHONPATH": str(site)},
    "SCHEDULER_TARGET_MODULES": lambda site: {
        "PYTHONPATH": str(EXAMPLE / "src"),
        "SCHEDULER_TARGET_MODULES": "example_targets.targets",
    },
}


@pytest.mark.cluster
@pytest.mark.celery
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_the_example_targets_run_on_a_node_and_on_a_worker(
    mechanism, installed_example, start_node, start_worker, queue, tmp_path, monkeypatch
):
    # The node and the worker are started with this process's environment.
    for name, value in MECHANISMS[mechanism](installed_example).items():
        monkeypatch.setenv(name, value)
    report = tmp_path / "report.txt"
    inline = make_job("inline report", "example.write_report",
                      kwargs={"path": str(report), "region": "eu", "copies": 2})  # fmt: skip
    remote = make_job("celery report", "example.write_report", executor="celery", queue=queue,
                      kwargs={"path": str(report), "region": "us"})  # fmt: skip
    start_node("targets-node", extra_env=test_celery.CELERY_ENV)
    start_worker()
    runs = [queue_manual_run(inline), queue_manual_run(remote)]

    def finished():
        states = Execution.objects.filter(pk__in=[r.pk for r in runs]).values_list("state")
        return all(state not in ("pending", "dispatched", "running") for (state,) in states)

    wait_for(finished, timeout=60, message="both runs finished")
    for run in runs:
        run.refresh_from_db()
        assert (run.state, run.error) == ("succeeded", "")
    inline_run, remote_run = runs
    assert not remote_run.node.startswith("targets-node")  # run by the worker
    lines = sorted(report.read_text().splitlines())
    assert [line.split()[1::2] for line in lines] == [
        ["eu", "execution"], ["eu", "execution"], ["us", "execution"],
    ]  # fmt: skip
    assert sorted(int(line.split()[-1]) for line in lines) == sorted(
        [inline_run.pk, inline_run.pk, remote_run.pk]
    )


def manage(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**os.environ, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_target_module_that_cannot_be_imported_stops_start_up_naming_it():
    result = manage("check", SCHEDULER_TARGET_MODULES="example_targets.targets,no_such.targets",
                    PYTHONPATH=str(EXAMPLE / "src"))  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "django.core.exceptions.ImproperlyConfigured: Cannot import the job target module "
        "'no_such.targets', named by SCHEDULER_TARGET_MODULES: ModuleNotFoundError: No "
        "module named 'no_such'"
    )


def test_an_entry_point_whose_module_fails_stops_start_up_naming_it(tmp_path):
    # A package as pip would leave it: its metadata names a module that raises on import.
    dist_info = tmp_path / "broken_targets-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-targets\n"
                                        "Version: 1.0\n")  # fmt: skip
    (dist_info / "entry_points.txt").write_text(
        "[clustered_scheduler.targets]\nbroken = broken_targets\n"
    )
    (tmp_path / "broken_targets.py").write_text("raise RuntimeError('missing API key')\n")
    result = manage("check", PYTHONPATH=str(tmp_path))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "django.core.exceptions.ImproperlyConfigured: Cannot import the job target module "
        "'broken_targets', named by entry point 'broken' of broken-targets (group "
        "clustered_scheduler.targets): RuntimeError: missing API key"
    )


def test_a_badly_formed_module_name_is_refused_at_start_up():
    result = manage("check", SCHEDULER_TARGET_MODULES="ours/targets.py")
    assert result.returncode != 0
    assert "'ours/targets.py' is not a dotted module name" in result.stderr


def test_the_example_package_declares_its_entry_point():
    import tomllib

    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["clustered_scheduler.targets"] == {
        "example": "example_targets.targets"
    }


def test_the_compose_override_runs_every_app_service_on_the_image_with_the_targets():
    import yaml

    from tests.test_deployment import APP_SERVICES, compose

    base = compose()["services"]
    override = yaml.safe_load((ROOT / "examples" / "docker-compose.targets.yml").read_text())
    assert sorted(override["services"]) == sorted(APP_SERVICES)
    for name in APP_SERVICES:
        service = override["services"][name]
        assert service["image"] == "our-scheduler" != base[name]["image"]
        context = ROOT / service["build"]["context"]
        assert context == EXAMPLE
        # Built FROM the image the base file builds and tags.
        assert service["build"]["args"]["SCHEDULER_IMAGE"] == base[name]["image"]
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    assert "FROM ${SCHEDULER_IMAGE}" in dockerfile
    assert dockerfile.rstrip().endswith("USER app")  # never runs as root
