"""The documented production set-up in one piece: the README's Postgres `dagster.yaml` (queued
runs, dagster-daemon), two dagster-celery workers on Redis, and Metaflow on S3 (moto server).

A foreach deployed with `--executor celery` on `--datastore s3` is triggered, queued in
Postgres, launched by the daemon, and its tasks spread over both workers; the ops hand each
other pathspecs through the instance (Postgres), never a local file; artifacts and logs are in
the bucket and read back with the Metaflow client; an exit hook ran on the run worker.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Workspace, short_key
from services import (
    CeleryWorkers,
    celery_config,
    celery_hosts,
    dagster_daemon,
    metaflow_env,
    moto_s3,
    pg_query,
    postgres_server,
    production_yaml,
    redis_server,
    s3_keys,
)

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e

READ_BACK = r"""
import json, sys
from metaflow import Run, namespace
namespace(None)
run = Run(sys.argv[1])
print(json.dumps({
    "successful": run.successful,
    "squares": run["join"].task.data.squares,
    "works": sorted(t.data.square for t in run["work"].tasks()),
    "ds_types": sorted({t.metadata_dict.get("ds-type") for s in run for t in s}),
    "end_stdout": run["end"].task.stdout,
}))
"""

HOOK = '''

def _hook(run=None):
    with open("hook-" + run.id, "w") as f:
        f.write(str(run.successful))
'''


def _failures(ws: Workspace) -> str:
    """The error events of every run in the instance: what a failed assertion should show."""
    from dagster import DagsterInstance

    out = []
    with DagsterInstance.from_config(str(ws.dagster_home)) as instance:
        for run in instance.get_runs():
            for rec in instance.all_logs(run.run_id):
                ev = rec.dagster_event
                if ev is not None and (ev.is_failure or ev.event_type_value in ("ENGINE_EVENT", "RUN_FAILURE")):
                    err = getattr(ev.event_specific_data, "error", None)
                    out.append(f"{ev.event_type_value} {rec.step_key}: {rec.message}\n{err.to_string() if err else ''}")
    return "\n".join(out)[-8000:]


@pytest.fixture
def stack(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Workspace, dict[str, str]]]:
    """Postgres, Redis and S3 up; DAGSTER_HOME holds the README's production dagster.yaml;
    every command of the test (and what it starts) sees the services' variables."""
    with postgres_server() as pg, redis_server() as redis_url, moto_s3() as s3:
        env = {**pg, **metaflow_env(s3), "_REDIS": redis_url, "_ENDPOINT": s3["_ENDPOINT"]}
        for key, value in env.items():
            if not key.startswith("_"):
                monkeypatch.setenv(key, value)
        (workspace.dagster_home / "dagster.yaml").write_text(production_yaml())
        yield workspace, env


@pytest.mark.flow("spread_flow.py")
def test_postgres_celery_and_s3_together(stack: tuple[Workspace, dict[str, str]]) -> None:
    ws, env = stack
    flow = ws.flow.read_text()
    # an exit hook too: with_metaflow_run_end runs it on the run worker after Celery's steps
    flow = flow.replace("from metaflow import FlowSpec", "from metaflow import exit_hook, FlowSpec")
    flow = flow.replace("class SpreadFlow", HOOK + "\n\n@exit_hook(on_success=[_hook])\nclass SpreadFlow")
    ws.flow.write_text(flow)
    config = celery_config(env["_REDIS"], ws)
    ws.compile("--executor", "celery", "--executor-config", json.dumps(config))
    source = (ws.dir / "out_dagster.py").read_text()
    assert 'datastore_type="s3"' in source and '"io_manager": metaflow_shared_io_manager' in source

    workers = CeleryWorkers(ws, config)
    try:
        with dagster_daemon(ws):
            res = ws.metaflow("dagster", "trigger", "--wait", "--run-id-file", "run-id", timeout=300, check=False)
            assert res.returncode == 0, res.stderr[-3000:] + workers.logs() + _failures(ws)
            assert "queued: dagster-daemon" in res.stderr + res.stdout
    finally:
        workers.stop()
    mf_run = (ws.dir / "run-id").read_text()

    from dagster import DagsterInstance
    from dagster_postgres import PostgresRunStorage

    with DagsterInstance.from_config(str(ws.dagster_home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        run = next(r for r in instance.get_runs() if metaflow_run_id(r.run_id) == mf_run)
        assert run.status.value == "SUCCESS"
        hosts = celery_hosts(instance, run.run_id)
        hooks = [e.message for e in instance.all_logs(run.run_id) if "@exit_hook _hook" in (e.message or "")]
    work = {k: v for k, v in hosts.items() if short_key(k).startswith("op_work")}
    assert len(work) == 6 and {w.split("@")[0] for w in work.values()} == {"w1", "w2"}, hosts
    assert len(hooks) == 1 and "(on_success) ran" in hooks[0]
    assert (ws.dir / f"hook-{mf_run}").read_text() == "True"

    # the run and the pathspecs the ops handed each other are rows in Postgres
    assert dict(pg_query(env, "SELECT run_id, status FROM runs")) == {run.run_id: "SUCCESS"}
    io_keys = [k for (k,) in pg_query(env, "SELECT key FROM kvs") if k.startswith("dagster_metaflow/io/")]
    assert any(run.run_id in k for k in io_keys), io_keys

    # artifacts and logs in the bucket, read back with the Metaflow client; nothing local
    got = json.loads(ws.run(sys.executable, "-c", READ_BACK, f"SpreadFlow/{mf_run}").stdout)
    assert got["successful"] is True and got["ds_types"] == ["s3"]
    assert got["squares"] == got["works"] == [0, 1, 4, 9, 16, 25]
    assert "squares [0, 1, 4, 9, 16, 25]" in got["end_stdout"]
    keys = s3_keys(env, f"metaflow/SpreadFlow/{mf_run}/")
    assert any("/work/" in k for k in keys), keys[:5]
    local = Path(os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"]) / ".metaflow" / "SpreadFlow" / mf_run
    assert not local.exists() or not list(local.glob("*/*/*.data.json"))
