"""Attempts, run-level timeouts, refusals and the `dagster dev` (webserver + run launcher) path."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, Workspace, stop_group
from services import free_port

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e


@pytest.mark.flow("flaky_start_flow.py")
def test_start_retry_reuses_parameters_and_foreach_reads_final_attempt(workspace: Workspace) -> None:
    from metaflow import Run

    out = workspace.compile()
    workspace.dagster_execute(out, "FlakyStartFlow", "ops:\n  FlakyStartFlow_steps:\n    ops:\n      op_start:\n        config:\n          width: 4\n")
    run = Run(f"FlakyStartFlow/{metaflow_run_id(workspace.last_dagster_run().run_id)}")
    assert run.successful
    # attempt 0 set 9 items and failed; the foreach must use attempt 1's 4 items
    assert run["join"].task.data.n == 4 and run["join"].task.data.total == 0 + 1 + 4 + 9
    assert len(list(run["body"].tasks())) == 4
    assert run["start"].task.current_attempt == 1
    # `flow.py init` ran once: the _parameters task has a single attempt
    params_dir = Path(os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"]) / ".metaflow" / "FlakyStartFlow" / run.id / "_parameters"
    tasks = [t for t in params_dir.iterdir() if not t.name.startswith("_")]  # _meta: metadata
    assert [t.name for t in tasks] == ["t-params"]
    messages = [e.user_message or "" for e in workspace.dagster_events(workspace.last_dagster_run().run_id)]
    assert sum("already persisted; reusing them" in m for m in messages) == 1


@pytest.mark.flow("slow_linear_flow.py")
def test_workflow_timeout_stops_the_run(workspace: Workspace) -> None:
    out = workspace.compile("--workflow-timeout", "5")
    text = out.read_text()
    assert '"dagster/max_runtime": "5"' in text and '"workflow_timeout": 5' in text
    t0 = time.monotonic()
    res = workspace.dagster_execute(out, "SlowLinearFlow", check=False)
    assert res.returncode != 0
    assert time.monotonic() - t0 < 60
    run = workspace.last_dagster_run()
    assert run.status.value == "FAILURE"
    texts = " ".join(
        (e.user_message or "") for e in workspace.dagster_events(run.run_id)
    )
    assert "workflow timeout of 5s exceeded" in texts
    # kept on the run: `status` says why, `list-runs --timed-out` finds it
    assert run.tags["dagster-metaflow/timed-out"] == "true"
    mf_run = metaflow_run_id(run.run_id)
    status = workspace.metaflow("dagster", "status", "--run-id", mf_run)
    assert "Error: run exceeded its workflow timeout of 5 seconds" in status.stderr + status.stdout
    assert mf_run in workspace.metaflow("dagster", "list-runs", "--timed-out").stdout
    assert mf_run not in workspace.metaflow("dagster", "list-runs", "--succeeded").stdout


@pytest.mark.flow("linear_flow.py")
def test_create_refusals_and_default_file_name(workspace: Workspace) -> None:
    res = workspace.metaflow("dagster", "create", "linear_flow.py", check=False)
    assert res.returncode != 0 and "refusing to overwrite the flow file" in res.stderr + res.stdout
    res = workspace.metaflow("dagster", "create", "--name", "bad-name", check=False)
    assert res.returncode != 0 and "not a valid Dagster name" in res.stderr + res.stdout
    res = workspace.metaflow("dagster", "create")
    assert "Compiling LinearFlow to Dagster job LinearFlow..." in res.stdout + res.stderr
    assert (workspace.dir / "linearflow_dagster.py").exists()
    workspace.metaflow("dagster", "create", "--name", "Nightly_Linear", "other.py")
    assert 'name="Nightly_Linear"' in (workspace.dir / "other.py").read_text()
    # byte-identical output for the same flow and options
    first = (workspace.dir / "other.py").read_bytes()
    workspace.metaflow("dagster", "create", "--name", "Nightly_Linear", "other.py")
    assert (workspace.dir / "other.py").read_bytes() == first


@pytest.mark.flow("sleepy_flow.py")
def test_dagster_dev_launch_and_terminate(workspace: Workspace) -> None:
    """Runs launched through the webserver execute in a separate run worker; terminating one
    from Dagster must stop the step's whole process tree."""
    import psutil
    from dagster_graphql import DagsterGraphQLClient

    workspace.flow.write_text(workspace.flow.read_text().replace("@timeout(seconds=4)", ""))
    out = workspace.compile()
    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=str(workspace.dagster_home))
    server = subprocess.Popen(
        [str(BIN / "dagster"), "dev", "-f", str(out), "-h", "127.0.0.1", "-p", str(port)],
        cwd=workspace.dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        deadline = time.monotonic() + 120
        run_id = None
        while run_id is None:
            try:
                run_id = client.submit_job_execution(
                    "SleepyFlow",
                    run_config={
                        "ops": {
                            "SleepyFlow_steps": {
                                "ops": {"op_start": {"config": {"marker-dir": str(workspace.dir)}}}
                            }
                        }
                    },
                )
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        pid_file = workspace.dir / "pids"
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline, f"step never started: {client.get_run_status(run_id)}"
            time.sleep(0.5)
        pids = [int(p) for p in pid_file.read_text().split()]
        client.terminate_run(run_id)
        gone = time.monotonic() + 40
        while time.monotonic() < gone and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids):
            time.sleep(0.5)
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
        while client.get_run_status(run_id).value not in ("CANCELED", "FAILURE") and time.monotonic() < gone:
            time.sleep(0.5)
        assert client.get_run_status(run_id).value == "CANCELED"
    finally:
        stop_group(server)
