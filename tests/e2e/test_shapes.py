"""Differential tests: every graph shape, run natively and under Dagster, same artifacts.

Each flow in tests/flows/shapes is compiled, executed with `dagster job execute`, and
every task's artifacts (keyed by step, foreach index path and loop iteration path) are
compared with a native `python flow.py run` of the same flow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (
    FLOWS,
    Workspace,
    artifacts_by_task,
    chunked_env,
    latest_run_pathspec,
    short_key,
)

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e

SHAPES = sorted(p.name for p in (FLOWS / "shapes").glob("*_flow.py") if p.name != "empty_inner_flow.py")


def _flow_class_name(path: Path) -> str:
    import ast

    tree = ast.parse(path.read_text())
    return next(n.name for n in tree.body if isinstance(n, ast.ClassDef))


ZYGOTE = {"DAGSTER_METAFLOW_FORK": "1"}
SUBPROCESS = {"DAGSTER_METAFLOW_FORK": "0"}
# every foreach whose body may run in chunks does, two tasks a chunk
CHUNKED = chunked_env(2)


def _differential(
    ws: Workspace, runs: tuple[dict[str, str], ...] = (ZYGOTE,), chunked: bool = False
) -> dict:
    """Run the flow natively once, compile it once, execute it under Dagster once per
    environment in `runs` (and, with `chunked`, once more with every foreach that may run
    in chunks doing so), and compare every task's artifacts with native's."""
    from metaflow import Run

    flow_name = _flow_class_name(ws.flow)
    ws.metaflow("run")
    native = latest_run_pathspec(flow_name)
    expected = artifacts_by_task(native)
    out = ws.compile()
    if chunked and "def chunk_" in out.read_text():
        # chunks forked from the zygote; tests/e2e/test_chunks.py runs a chunked failure
        # through plain `flow.py step` processes (the chunk op's other path)
        runs = (*runs, {**ZYGOTE, **CHUNKED})
    got: dict = {}
    for env in runs:
        ws.dagster_execute(out, flow_name, **env)
        dagster_run = ws.last_dagster_run()
        dag = f"{flow_name}/{metaflow_run_id(dagster_run.run_id)}"
        assert Run(dag).successful
        ids = [task.id for step in Run(dag) for task in step]
        assert len(ids) == len(set(ids)), "task ids must be unique within a run, as natively"
        got = artifacts_by_task(dag)
        assert got.keys() == expected.keys(), env
        for key in expected:
            assert got[key] == expected[key], (env, key)
        # `trigger --wait`'s progress counts the tasks Metaflow ran, as natively
        assert ws.tasks_done(dagster_run.run_id) == len(expected), env
        if "DAGSTER_METAFLOW_CHUNK_ABOVE" in env:  # it ran chunk ops
            ran = ws.step_keys(dagster_run.run_id, "STEP_SUCCESS")
            assert any(k.startswith("chunk_") or k.endswith("ubf]") for k in ran), ran
    return got


def _switch_choice_comes_from_final_attempt(ws: Workspace, got: dict) -> None:
    assert got[("merge", (), ())]["took"] == "b"
    assert "op_branch_a" in ws.step_keys(ws.last_dagster_run().run_id, "STEP_SKIPPED")


def _loop_iterations_have_their_own_attempts(ws: Workspace, got: dict) -> None:
    from metaflow import Run

    run = Run(f"RecursiveRetryFlow/{metaflow_run_id(ws.last_dagster_run().run_id)}")
    attempts = {t.id: t.current_attempt for t in run["loop"].tasks()}
    # attempts per iteration, as natively: only the third iteration was retried
    assert attempts == {"loop": 0, "loop-r1": 0, "loop-r2": 1, "loop-r3": 0}, attempts


def _branches_not_taken_run_no_task_and_keys_show_index_paths(ws: Workspace, got: dict) -> None:
    run = ws.last_dagster_run()
    skipped = ws.step_keys(run.run_id, "STEP_SKIPPED")
    succeeded = ws.step_keys(run.run_id, "STEP_SUCCESS")
    # (row, col) cells: on_diag runs for (0,0),(1,1); off_diag for the other four. Inside a
    # foreach a switch passes "not taken" to the other branch, whose op ends at once without
    # a Metaflow task (the differential check compares every task with native)
    assert {"op_on_diag[0_0]", "op_on_diag[1_1]", "op_on_diag[0_1]", "op_off_diag[1_1]"} <= succeeded
    assert not {k for k in skipped if k.startswith(("op_on_diag", "op_off_diag"))}
    assert run.status.value == "SUCCESS"


# checks of the Dagster run beyond the differential one, for shapes that need them (run on
# the shape's own test, so the shape is not run natively and compiled a second time)
SHAPE_CHECKS = {
    "nested_switch_flow.py": _branches_not_taken_run_no_task_and_keys_show_index_paths,
    "switch_retry_flow.py": _switch_choice_comes_from_final_attempt,
    "recursive_retry_flow.py": _loop_iterations_have_their_own_attempts,
}


# shapes also run through plain `python flow.py step` processes: those whose steps start
# processes themselves (@parallel, unbounded foreach control tasks), run several tasks in
# one op (loops), retry, or nest deepest. Both paths get the same argv and environment from
# the same code (`process.supervise_step` only picks the spawner), so the other shapes would
# repeat the same comparison at the cost of one `flow.py step` interpreter per task.
PLAIN_TOO = frozenset({
    "nested3_flow.py", "parallel_flow.py", "recursive_in_foreach_flow.py",
    "recursive_retry_flow.py", "switch_retry_flow.py", "ubf_flow.py", "ubf_nested_flow.py",
})
assert PLAIN_TOO <= set(SHAPES), f"not shapes: {sorted(PLAIN_TOO - set(SHAPES))}"


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_matches_native(shape: str, request: pytest.FixtureRequest) -> None:
    """The whole catalogue with steps forked from the zygote, and for PLAIN_TOO also as
    plain subprocesses (two runs of one compiled file): the fast path must be
    indistinguishable from `python flow.py step`; and one more run in chunks for shapes
    with a chunkable foreach."""
    request.node.add_marker(pytest.mark.flow(f"shapes/{shape}"))
    ws = request.getfixturevalue("workspace")
    runs = (ZYGOTE, SUBPROCESS) if shape in PLAIN_TOO else (ZYGOTE,)
    got = _differential(ws, runs, chunked=True)
    if shape in SHAPE_CHECKS:
        SHAPE_CHECKS[shape](ws, got)


@pytest.mark.flow("shapes/empty_inner_flow.py")
def test_empty_inner_foreach_fails_like_native(workspace: Workspace) -> None:
    res = workspace.metaflow("run", check=False)
    assert res.returncode != 0 and "zero splits" in res.stdout + res.stderr
    out = workspace.compile()
    res = workspace.dagster_execute(out, "EmptyInnerFlow", check=False)
    assert res.returncode != 0
    run = workspace.last_dagster_run()
    failed = [
        e for e in workspace.dagster_events(run.run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
    ]
    assert [short_key(e.step_key) for e in failed] == ["op_outer_step[1]"]
    assert "zero splits" in failed[0].dagster_event.step_failure_data.user_failure_data.description
