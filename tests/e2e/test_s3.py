"""Metaflow's S3 datastore for real: a local S3-compatible server (moto, server mode).

Artifacts, logs, the code package and resume all go through S3 and read back with the
Metaflow client; a job for Dagster's Kubernetes executor compiles against it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Workspace
from services import BUCKET, metaflow_env, moto_s3, s3_keys

pytestmark = pytest.mark.e2e

# what the in-process and step processes need to talk to the local server
READ_BACK = r"""
import json, sys
from metaflow import Run, namespace
namespace(None)
run = Run(sys.argv[1])
out = {"successful": run.successful, "code": run.code is not None and sorted(run.code.flowspec.split()[:3]), "tasks": {}}
for step in run.steps():
    for task in step.tasks():
        out["tasks"][f"{step.id}/{task.id}"] = {
            "artifacts": {a.id: a.data for a in task.artifacts if not a.id.startswith("_") and a.id != "name"},
            "stdout": task.stdout,
            "ds_type": task.metadata_dict.get("ds-type"),
            "origin_run_id": task.metadata_dict.get("origin-run-id"),
        }
print(json.dumps(out, default=repr))
"""


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    with moto_s3() as env:
        yield env


def _read_back(ws: Workspace, env: dict[str, str], pathspec: str) -> dict[str, Any]:
    res = ws.run(sys.executable, "-c", READ_BACK, pathspec, **env)
    return json.loads(res.stdout)


@pytest.mark.flow("deploy_flow.py")
def test_s3_datastore_runs_resumes_and_reads_back(workspace: Workspace, s3_env: dict[str, str]) -> None:
    env = metaflow_env(s3_env)
    workspace.metaflow("dagster", "create", "out_dagster.py", **env)
    source = (workspace.dir / "out_dagster.py").read_text()
    assert 'datastore_type="s3"' in source and f"s3://{BUCKET}/metaflow" in source
    # the code package went to S3 at create
    assert any("DeployFlow/data/" in k for k in s3_keys(s3_env, "metaflow/DeployFlow/")), "no code package"

    (workspace.dir / "fail-2").write_text("")
    res = workspace.metaflow(
        "dagster", "trigger", "--marker-dir", str(workspace.dir), "--wait", "--run-id-file", "first",
        check=False, **env,
    )
    assert res.returncode != 0, res.stderr[-2000:]
    origin = (workspace.dir / "first").read_text()
    (workspace.dir / "fail-2").unlink()
    workspace.metaflow(
        "dagster", "resume", "--origin-run-id", origin, "--wait", "--run-id-file", "second", **env
    )
    second = (workspace.dir / "second").read_text()

    got = _read_back(workspace, env, f"DeployFlow/{second}")
    assert got["successful"] is True
    tasks = got["tasks"]
    assert tasks["join/join"]["artifacts"]["results"] == [2, 4, 6]
    assert {t["ds_type"] for t in tasks.values()} == {"s3"}
    assert tasks["body/body-0"]["origin_run_id"] == origin  # cloned through S3
    assert "origin_run_id" in tasks["body/body-1"] and tasks["body/body-1"]["artifacts"]["out"] == 4
    assert got["code"], "run.code (the code package) not readable"
    # artifacts and logs of both runs are in the bucket, not on local disk
    keys = s3_keys(s3_env, "metaflow/DeployFlow/")
    for run_id in (origin, second):
        assert any(k.startswith(f"metaflow/DeployFlow/{run_id}/body/") for k in keys), run_id
    assert any(k.endswith(".log") or "/_meta" in k or "mflog" in k for k in keys if second in k)
    local = Path(os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"]) / ".metaflow" / "DeployFlow" / second
    assert not list(local.glob("*/*/*.data.json")), "task data written to the local datastore"


@pytest.mark.flow("hello_flow.py")
def test_k8s_executor_job_compiles_against_s3(workspace: Workspace, s3_env: dict[str, str]) -> None:
    pytest.importorskip("dagster_k8s")
    env = metaflow_env(s3_env)
    workspace.metaflow(
        "dagster", "create", "out_dagster.py", "--executor", "k8s",
        "--executor-config", json.dumps({"job_namespace": "metaflow", "image_pull_policy": "Always"}),
        **env,
    )
    source = (workspace.dir / "out_dagster.py").read_text()
    assert "from dagster_k8s import k8s_job_executor" in source
    assert '"io_manager": metaflow_shared_io_manager' in source
    # Dagster validates the job and its run config (the baked defaults, overridable)
    code = (
        "import importlib.util, sys\n"
        "from dagster import validate_run_config\n"
        "spec = importlib.util.spec_from_file_location('m', 'out_dagster.py')\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "job = m.defs.get_job_def('HelloFlow')\n"
        "cfg = validate_run_config(job, {})['execution']['k8s']\n"
        "assert cfg['job_namespace'] == 'metaflow', cfg\n"
        "cfg = validate_run_config(job, {'execution': {'config': {'job_namespace': 'x'}}})\n"
        "assert cfg['execution']['k8s']['job_namespace'] == 'x'\n"
        "print('ok')\n"
    )
    assert workspace.run(sys.executable, "-c", code, **env).stdout.strip() == "ok"


@pytest.mark.flow("hello_flow.py")
def test_k8s_executor_refuses_the_local_datastore(workspace: Workspace) -> None:
    pytest.importorskip("dagster_k8s")
    res = workspace.metaflow("dagster", "create", "out_dagster.py", "--executor", "k8s", check=False)
    assert res.returncode == 1
    assert "cannot read the local datastore" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.flow("hello_flow.py")
def test_kubernetes_steps_compile_against_s3_with_their_code_package(
    workspace: Workspace, s3_env: dict[str, str]
) -> None:
    """`--with kubernetes` on S3: `create` saves the code package the pods will run and
    marks every step for launching; the op's command is Metaflow's `kubernetes step`."""
    pytest.importorskip("kubernetes")
    env = metaflow_env(s3_env)
    workspace.metaflow("dagster", "create", "out_dagster.py", "--with", "kubernetes", **env)
    source = (workspace.dir / "out_dagster.py").read_text()
    assert source.count('launcher="kubernetes"') == 9, source  # 8 steps, the body's chunk op
    assert "kubernetes" in source and "metaflow/launcher" in source
    from dagster import DagsterInstance

    from dagster_metaflow import deployments

    with DagsterInstance.from_config(str(workspace.dagster_home)) as instance:
        dep = deployments.get(instance, "HelloFlow")
    assert dep is not None and dep.code_package, "no code package recorded"
    url = dep.code_package["url"]
    assert url.startswith(f"s3://{BUCKET}/metaflow/HelloFlow/data/"), url
    assert url[len(f"s3://{BUCKET}/"):] in s3_keys(s3_env, "metaflow/HelloFlow/data/"), url
