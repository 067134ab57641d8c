"""Flows as assets: what a run materializes, lineage between flows, and the opt-in
AutomationCondition that replaces @trigger_on_finish's sensor (issue 17)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FLOWS, Workspace

from dagster_metaflow.runtime import metaflow_run_id


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"assets_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _latest(ws: Workspace, *key: str) -> Any:
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.from_config(str(ws.dagster_home)) as instance:
        event = instance.get_latest_materialization_event(AssetKey(list(key)))
    return None if event is None else event.asset_materialization


@pytest.mark.flow("upstream_flow.py")
def test_assets_materialize_with_lineage_and_automation(workspace: Workspace) -> None:
    from dagster import AssetKey, DagsterInstance, Definitions, evaluate_automation_conditions

    shutil.copy(FLOWS / "downstream_flow.py", workspace.dir)
    up = workspace.compile("--asset", "value", "--asset", "missing", out="up_dagster.py")
    workspace.run(
        sys.executable, "downstream_flow.py", "dagster", "create", "down_dagster.py",
        "--asset-automation",
    )  # fmt: skip
    up_text, down_text = up.read_text(), (workspace.dir / "down_dagster.py").read_text()
    assert 'key=["UpstreamFlow", "value"]' in up_text
    assert "AutomationConditionSensorDefinition(" in down_text and "@sensor(" not in down_text

    # lineage: DownstreamFlow's asset reads UpstreamFlow's (its @trigger_on_finish)
    defs = Definitions.merge(_load(up).defs, _load(workspace.dir / "down_dagster.py").defs)
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    down = graph.get(AssetKey(["DownstreamFlow"]))
    assert AssetKey(["UpstreamFlow"]) in down.parent_keys
    assert down.group_name == "DownstreamFlow" and "dagster/kind/metaflow" in down.tags
    assert [o for o in down.owners] == ["team:tester"] or down.owners  # the deploying user

    # a failed run materializes nothing
    res = workspace.metaflow("dagster", "trigger", "--fail", "True", "--wait", check=False)
    assert res.returncode != 0
    assert _latest(workspace, "UpstreamFlow") is None

    with DagsterInstance.from_config(str(workspace.dagster_home)) as instance:
        baseline = evaluate_automation_conditions(defs=defs, instance=instance)
        assert baseline.get_num_requested(AssetKey(["DownstreamFlow"])) == 0  # nothing new yet

    workspace.metaflow("dagster", "trigger", "--wait", "--run-id-file", "ok")
    run_id = (workspace.dir / "ok").read_text()
    flow = _latest(workspace, "UpstreamFlow")
    assert flow.metadata["metaflow/run_pathspec"].value == f"UpstreamFlow/{run_id}"
    value = _latest(workspace, "UpstreamFlow", "value")
    assert value.metadata["metaflow/value"].value == 42
    assert value.metadata["metaflow/type"].value == "int"
    assert _latest(workspace, "UpstreamFlow", "missing") is None  # no such artifact: skipped

    # the opt-in automation: one request for the downstream flow after the upstream run
    with DagsterInstance.from_config(str(workspace.dagster_home)) as instance:
        first = evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=baseline.cursor
        )
        assert first.get_num_requested(AssetKey(["DownstreamFlow"])) == 1
        again = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert again.get_num_requested(AssetKey(["DownstreamFlow"])) == 0

        # a run of Dagster's implicit asset job (what "Materialize" launches for a job name
        # that sorts after `__ASSET_JOB`) is still the deployment's: list-runs and status
        implicit = _load(up).defs.resolve_implicit_global_asset_job_def()
        up_keys = [AssetKey(["UpstreamFlow", *k]) for k in ((), ("value",), ("missing",))]
        result = implicit.get_subset(asset_selection=set(up_keys)).execute_in_process(
            instance=instance
        )
        assert result.success
    mf_id = metaflow_run_id(result.run_id)
    listed = workspace.metaflow("dagster", "list-runs").stdout
    assert f"UpstreamFlow/{mf_id}" in listed, listed
    status = workspace.metaflow("dagster", "status", "--run-id", mf_id).stdout
    assert f"UpstreamFlow/{mf_id}: SUCCEEDED" in status, status
