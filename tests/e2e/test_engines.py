"""Distributed executors for real: Redis and two dagster-celery workers started here.

A foreach's tasks spread over both workers, artifacts equal a native run, and terminating
the run stops the steps the workers are running (they poll the run's status: Dagster's
Celery executor only revokes tasks that have not started).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Workspace, artifacts_by_task, latest_run_pathspec, short_key, survivors
from services import CeleryWorkers, celery_config, celery_hosts, redis_server

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def celery_workspace(workspace: Workspace, redis_url: str) -> Iterator[tuple[Workspace, CeleryWorkers]]:
    config = celery_config(redis_url, workspace)
    workspace.compile("--executor", "celery", "--executor-config", json.dumps(config))
    workers = CeleryWorkers(workspace, config)
    try:
        yield workspace, workers
    finally:
        workers.stop()


def _instance(ws: Workspace) -> Any:
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(ws.dagster_home))


@pytest.mark.flow("spread_flow.py")
def test_celery_workers_share_a_foreach_and_match_native(
    celery_workspace: tuple[Workspace, CeleryWorkers],
) -> None:
    ws, workers = celery_workspace
    source = (ws.dir / "out_dagster.py").read_text()
    assert "executor_def=with_metaflow_run_end(executor_with_defaults(celery_executor, {" in source
    assert '"io_manager": metaflow_shared_io_manager' in source
    res = ws.metaflow("dagster", "trigger", "--wait", "--run-id-file", "run-id", check=False)
    assert res.returncode == 0, res.stderr[-3000:] + workers.logs()
    mf_run = (ws.dir / "run-id").read_text()
    with _instance(ws) as instance:
        run = next(r for r in instance.get_runs() if metaflow_run_id(r.run_id) == mf_run)
        assert run.status.value == "SUCCESS"
        hosts = celery_hosts(instance, run.run_id)
    work = {k: v for k, v in hosts.items() if short_key(k).startswith("op_work")}
    assert len(work) == 6, hosts
    assert {w.split("@")[0] for w in work.values()} == set(workers.names), f"foreach tasks not spread: {work}"

    ws.metaflow("run")
    native = latest_run_pathspec("SpreadFlow", prefix=None)
    assert native != f"SpreadFlow/{mf_run}"
    assert artifacts_by_task(f"SpreadFlow/{mf_run}") == artifacts_by_task(native)


@pytest.mark.flow("sleepy_flow.py")
def test_terminate_stops_steps_on_celery_workers(workspace: Workspace, redis_url: str) -> None:
    workspace.flow.write_text(workspace.flow.read_text().replace("@timeout(seconds=4)", ""))
    config = celery_config(redis_url, workspace)
    workspace.compile("--executor", "celery", "--executor-config", json.dumps(config))
    workers = CeleryWorkers(workspace, config)
    try:
        workspace.metaflow("dagster", "trigger", "--marker-dir", str(workspace.dir), "--run-id-file", "run-id")
        mf_run = (workspace.dir / "run-id").read_text()
        pid_file = workspace.dir / "pids"
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline, "the step never started\n" + workers.logs()
            time.sleep(0.5)
        pids = [int(p) for p in pid_file.read_text().split()]
        workspace.metaflow("dagster", "terminate", "--run-id", mf_run)
        assert not survivors(pids, within=20), "step processes survived terminate on the celery worker"
        assert all(p.poll() is None for p in workers.procs), "a worker died with its step"
    finally:
        workers.stop()
    from metaflow import Run

    assert not Run(f"SleepyFlow/{mf_run}", _namespace_check=False).successful


def test_celery_executor_config_is_checked_at_create(tmp_path: Path) -> None:
    flow = Path(__file__).parents[1] / "flows" / "linear_flow.py"
    res = subprocess.run(
        [sys.executable, str(flow), "dagster", "create", str(tmp_path / "x.py"),
         "--executor", "celery", "--executor-config", '{"brokr": "redis://x"}'],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
    )
    assert res.returncode == 1
    assert "no config field 'brokr'" in res.stderr
    assert "Traceback" not in res.stderr
