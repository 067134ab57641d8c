"""Production instance for real: a PostgreSQL started here holds the Dagster instance
(dagster-postgres, with the README's production dagster.yaml read from the README itself),
two flows deployed to it, their runs queued and launched by a real dagster-daemon pointed
at the workspace file; the runs, the deployment records and the artifacts are read back.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, FLOWS, Workspace

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e
README = Path(__file__).resolve().parents[2] / "README.md"
SKIP_REASON = (
    "PostgreSQL server binaries (initdb, postgres) not found on PATH or in "
    "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"
)


def _pg_binary(name: str) -> str | None:
    """PATH first, then Debian's versioned directory (not on PATH), newest version."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")

    def version(path: str) -> int:
        v = Path(path).parts[-3]
        return int(v) if v.isdigit() else 0

    return max(candidates, key=version) if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> dict[str, Any]:
    """initdb and postgres refuse to run as root: as root, run them as `postgres` (Debian's
    package creates it) or `nobody`; otherwise as ourselves."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    pytest.skip("running as root and neither a `postgres` nor a `nobody` user exists for initdb")


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A throw-away PostgreSQL on a free port with a `dagster` database; yields the
    DAGSTER_PG_* variables the README's dagster.yaml reads."""
    initdb, server = _pg_binary("initdb"), _pg_binary("postgres")
    if initdb is None or server is None:
        pytest.skip(SKIP_REASON)
    import psycopg2

    who = _server_user()
    root = tempfile.mkdtemp(prefix="dm-pg-")
    if who:
        os.chown(root, who["user"], who["group"])
    data, port = os.path.join(root, "data"), _free_port()
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    init = subprocess.run(
        [initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"],
        cwd=root, env=env, capture_output=True, text=True, **who,
    )
    assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
    log = open(os.path.join(root, "postgres.log"), "wb")  # noqa: SIM115 - kept open for the server
    proc = subprocess.Popen(
        [server, "-D", data, "-p", str(port), "-h", "127.0.0.1", "-k", root,
         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, **who,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                assert proc.poll() is None, Path(root, "postgres.log").read_text()
                assert time.monotonic() < deadline, "postgres did not accept connections"
                time.sleep(0.1)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE dagster")
        conn.close()
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_PG_DB": "dagster",
        }
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown: ends open client connections
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _production_yaml() -> str:
    """The README's production dagster.yaml, so the documented file is the tested one."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if "QueuedRunCoordinator" in b and "postgres_db" in b]
    assert len(found) == 1, "README has no (or several) production dagster.yaml blocks"
    return found[0]


def _query(pg: dict[str, str], sql: str) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(
        host=pg["DAGSTER_PG_HOST"], port=int(pg["DAGSTER_PG_PORT"]), user=pg["DAGSTER_PG_USER"],
        dbname=pg["DAGSTER_PG_DB"],
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


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
    (home / "dagster.yaml").write_text(_production_yaml())
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

    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(workspace_file)],
        cwd=workspace.dir, env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=open(workspace.dir / "daemon.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
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
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)

    # the Dagster runs, read from the instance and straight from Postgres
    with DagsterInstance.from_config(str(home)) as instance:
        runs = {metaflow_run_id(r.run_id): r for r in instance.get_runs()}
    assert set(runs) == {deploy_id, linear_id}
    drun = runs[deploy_id]
    assert drun.status.value == "SUCCESS" and drun.job_name == "DeployFlow"
    assert drun.tags["metaflow/pathspec"] == f"DeployFlow/{deploy_id}"
    assert drun.tags["dagster-metaflow/deployment"] == "DeployFlow"
    assert runs[linear_id].status.value == "SUCCESS"
    in_pg = dict(_query(postgres, "SELECT run_id, status FROM runs"))
    assert in_pg == {drun.run_id: "SUCCESS", runs[linear_id].run_id: "SUCCESS"}
    keys = {k for (k,) in _query(postgres, "SELECT key FROM kvs")}
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
