"""The path Metaflow's core harness drives a scheduler through, on a sample of shapes.

Metaflow's `test/core` harness (run in full by ../shared/conformance/core-harness.sh, outside
CI: its code is in Metaflow's source repository, not in any package) runs
`python -B test_flow.py <top options> dagster create`, then
`python -B test_flow.py <top options> dagster trigger --run-id-file run-id`, polls
`Flow(name)[run_id].finished`, and checks the run. This does the same with the harness's
top-level options and environment-provided parameter values, on representative shapes, and
compares every task's artifacts with a native run.
"""

from __future__ import annotations

import sys
import time

import pytest
from conftest import Workspace, artifacts_by_task, latest_run_pathspec

pytestmark = pytest.mark.e2e

TOP = ("--metadata=local", "--datastore=local", "--environment=local",
       "--event-logger=nullSidecarLogger", "--no-pylint", "--quiet")


def _scheduler_run(ws: Workspace, flow_name: str, **env: str) -> str:
    from metaflow import Flow, namespace

    ws.run(sys.executable, "-B", ws.flow.name, *TOP, "dagster", "create", "--tag", "刺身 means sashimi", **env)
    ws.run(sys.executable, "-B", ws.flow.name, *TOP, "dagster", "trigger", "--run-id-file", "run-id", **env)
    run_id = (ws.dir / "run-id").read_text().strip()
    namespace(None)
    deadline = time.monotonic() + 300
    while True:
        try:
            run = Flow(flow_name, _namespace_check=False)[run_id]
            if run.finished:
                return run.pathspec
        except Exception:
            pass
        assert time.monotonic() < deadline, f"{flow_name}/{run_id} did not finish"
        time.sleep(1)


@pytest.mark.parametrize(
    "shape,flow_name",
    [
        ("shapes/nested2_flow.py", "Nested2Flow"),
        ("shapes/switch_into_foreach_join_flow.py", "SwitchIntoForeachJoinFlow"),
        ("shapes/recursive_flow.py", "RecursiveFlow"),
    ],
)
def test_harness_scheduler_path(shape: str, flow_name: str, request: pytest.FixtureRequest) -> None:
    request.node.add_marker(pytest.mark.flow(shape))
    ws = request.getfixturevalue("workspace")
    ws.metaflow("run")
    native = latest_run_pathspec(flow_name)
    got = _scheduler_run(ws, flow_name)
    from metaflow import Run

    assert Run(got, _namespace_check=False).successful
    assert "刺身 means sashimi" in Run(got, _namespace_check=False).tags
    assert artifacts_by_task(got) == artifacts_by_task(native)


@pytest.mark.flow("params_flow.py")
def test_parameter_values_from_the_environment(workspace: Workspace) -> None:
    """As `flow.py run` reads METAFLOW_RUN_<NAME>, so does `trigger` (the harness's contexts
    pass parameter values that way)."""
    from metaflow import Run

    got = _scheduler_run(
        workspace, "ParamsFlow", METAFLOW_RUN_NEEDED="5", METAFLOW_RUN_FLAG="True", METAFLOW_RUN_LABEL="from env",
    )
    seen = Run(got, _namespace_check=False)["start"].task.data.seen
    assert (seen["needed"], seen["flag"], seen["label"]) == (5, True, "from env")
