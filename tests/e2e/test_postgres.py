"""Production instance for real: a PostgreSQL started here holds the Dagster instance
(dagster-postgres, with the README's production dagster.yaml read from the README itself),
two flows deployed to it, their runs queued and launched by a real dagster-daemon pointed
at the workspace file; the runs, the deployment records and the artifacts are read back.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import FLOWS, Workspace
from services import dagster_daemon, pg_query, postgres_server, production_yaml

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    with postgres_server() as env:
        yield env


@pytest.mark.flow("deploy_flow.py")
def test_postgres_instance_with_queue_and_daemon(
    workspace: Workspace, postgres: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterInstance
    from dagster_postgres import PostgresRunStorage
    from metaflow import Run
    from metaflow.runner.deployer import DeployedFlow

    for key, value in postgres.items():  # this process and every command it starts
        monkeypatch.setenv(key, value)
    home = workspace.dagster_home
    (home / "dagster.yaml").write_text(production_yaml())
    shutil.copy(FLOWS / "linear_flow.py", workspace.dir / "linear_flow.py")
    workspace.metaflow("dagster", "create", "deploy_dagster.py")
    workspace.run(sys.executable, "linear_flow.py", "dagster", "create", "linear_dagster.py")
    workspace_file = home / "dagster_metaflow_workspace.yaml"
    listed = workspace_file.read_text()
    assert str(workspace.dir / "deploy_dagster.py") in listed and str(workspace.dir / "linear_dagster.py") in listed

    # queued with no daemon yet: the run waits in Postgres
    res = workspace.run(sys.executable, "linear_flow.py", "dagster", "trigger", "--run-id-file", "linear-id")
    assert "queued: dagster-daemon" in res.stderr + res.stdout
    linear_id = (workspace.dir / "linear-id").read_text()
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        queued = [r for r in instance.get_runs() if metaflow_run_id(r.run_id) == linear_id]
        assert [r.status.value for r in queued] == ["QUEUED"]

    with dagster_daemon(workspace):
        res = workspace.metaflow(
            "dagster", "trigger", "--alpha", "0.75", "--wait", "--run-id-file", "deploy-id", timeout=150
        )
        deploy_id = (workspace.dir / "deploy-id").read_text()
        assert f"DeployFlow/{deploy_id} SUCCESS" in res.stderr + res.stdout
        deadline = time.monotonic() + 60
        while "SUCCEEDED" not in workspace.run(
            sys.executable, "linear_flow.py", "dagster", "status", "--run-id", linear_id
        ).stdout:
            assert time.monotonic() < deadline, (workspace.dir / "daemon.log").read_text()[-4000:]
            time.sleep(1)

    # the Dagster runs, read from the instance and straight from Postgres
    with DagsterInstance.from_config(str(home)) as instance:
        runs = {metaflow_run_id(r.run_id): r for r in instance.get_runs()}
    assert set(runs) == {deploy_id, linear_id}
    drun = runs[deploy_id]
    assert drun.status.value == "SUCCESS" and drun.job_name == "DeployFlow"
    assert drun.tags["metaflow/pathspec"] == f"DeployFlow/{deploy_id}"
    assert drun.tags["dagster-metaflow/deployment"] == "DeployFlow"
    assert runs[linear_id].status.value == "SUCCESS"
    in_pg = dict(pg_query(postgres, "SELECT run_id, status FROM runs"))
    assert in_pg == {drun.run_id: "SUCCESS", runs[linear_id].run_id: "SUCCESS"}
    keys = {k for (k,) in pg_query(postgres, "SELECT key FROM kvs")}
    assert {"dagster_metaflow/deployment/DeployFlow", "dagster_metaflow/deployment/LinearFlow"} <= keys

    # the deployment records, from the CLI and the Deployer API
    assert deploy_id in workspace.metaflow("dagster", "list-runs", "--succeeded").stdout
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    deployed = DeployedFlow.from_deployment("DeployFlow", impl="dagster")
    assert deployed.id == f"DeployFlow@{home}"
    triggered = DeployedFlow.get_triggered_run(deployed.id, deploy_id, impl="dagster")
    assert triggered.status == "SUCCEEDED"

    # the Metaflow side
    run = Run(f"DeployFlow/{deploy_id}", _namespace_check=False)
    assert run.successful and "runtime:dagster" in run.system_tags
    assert run["start"].task.data.seen["alpha"] == 0.75
    assert run["join"].task.data.results == [2, 4, 6]
    assert run["end"].task.metadata_dict["dagster-run-id"] == drun.run_id
    assert Run(f"LinearFlow/{linear_id}", _namespace_check=False)["end"].task.data.final == 20
