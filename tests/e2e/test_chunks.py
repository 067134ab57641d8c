"""The chunked fan-out (runtime/chunks.py): a foreach wider than the threshold runs its body
in chunk ops, and every task still matches `python flow.py run` with its own attempts,
@catch, log lines and failure. The threshold is forced low so a 7-wide foreach chunks."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Workspace, artifacts_by_task, chunked_env, latest_run_pathspec

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e

CHUNKED = chunked_env(3, above=2)


def _artifacts(pathspec: str) -> dict:
    """Every task's artifacts; a caught exception by its last line (the traceback's file
    paths are the deployment's code package, not the flow's directory)."""
    got = artifacts_by_task(pathspec)
    for values in got.values():
        if isinstance(values.get("caught"), str):
            values["caught"] = values["caught"].strip().splitlines()[-1]
    return got


def _attempts(pathspec: str) -> dict[tuple[str, int | None], int]:
    from metaflow import Run

    return {(s.id, t.index): t.current_attempt for s in Run(pathspec) for t in s}


@pytest.mark.flow("chunked_flow.py")
def test_chunked_foreach_matches_native_task_by_task(workspace: Workspace) -> None:
    """`trigger --wait` of a chunked run: same artifacts and attempts per task as native
    (a retried task, a caught one), chunk ops instead of task ops, progress counting tasks."""
    ws = workspace
    ws.metaflow("run")
    native = latest_run_pathspec("ChunkedFlow")
    ws.compile()
    res = ws.metaflow("dagster", "trigger", "--wait", **CHUNKED)
    assert "tasks done 17" in res.stderr, res.stderr[-2000:]  # 1 + 7 + 7 + 1 + 1 tasks
    run = ws.last_dagster_run()
    dag = f"ChunkedFlow/{metaflow_run_id(run.run_id)}"
    assert _artifacts(dag) == _artifacts(native)
    assert _attempts(dag) == _attempts(native)
    assert _artifacts(dag)[("join", (), ())]["caught"] == [5]
    succeeded = ws.step_keys(run.run_id, "STEP_SUCCESS")
    chunks = {"tasks_0_to_2", "tasks_3_to_5", "tasks_6_to_6"}
    assert {f"chunk_body[{c}]" for c in chunks} | {f"chunk_post[{c}]" for c in chunks} <= succeeded
    assert not any(k.startswith(("op_body", "op_post")) for k in succeeded)
    messages = [e.user_message for e in ws.dagster_events(run.run_id)]
    mf_run = metaflow_run_id(run.run_id)
    assert f"Task {mf_run}/body/body-3 attempt 0 failed; retrying" in messages
    tables = {
        e.step_key.split(".")[-1]: e.dagster_event.event_specific_data.metadata["task table"].value
        for e in ws.dagster_events(run.run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "STEP_OUTPUT" and "chunk_" in e.step_key
    }
    # a row per task on its chunk op's output: pathspec, attempts, seconds
    assert sum(t.count(f"| `{mf_run}/post/post-") for t in tables.values()) == 7
    assert f"| `{mf_run}/body/body-3` | 2 |" in tables["chunk_body[tasks_3_to_5]"]
    from metaflow import Run

    assert Run(dag)["body"].tasks() and "body 3 attempt 1" in Run(dag)["body"]["body-3"].stdout


@pytest.mark.flow("chunked_flow.py")
def test_chunked_task_failure_names_the_task_and_stops_its_chunk(workspace: Workspace) -> None:
    """Through plain `flow.py step` processes (DAGSTER_METAFLOW_FORK=0): the chunk op's
    other path (the catalogue and the test above run chunks forked from the zygote)."""
    from metaflow import Run

    ws = workspace
    ws.compile()
    plain = {**CHUNKED, "DAGSTER_METAFLOW_FORK": "0"}
    res = ws.metaflow("dagster", "trigger", "--wait", "--fail_at", "4", check=False, **plain)
    assert res.returncode != 0
    run = ws.last_dagster_run()
    mf_run = metaflow_run_id(run.run_id)
    # `trigger --wait` says which task failed and why, through the chunk op
    assert f"FAILURE: Metaflow step 'body' (task {mf_run}/body/body-4) (retry 1)" in res.stderr
    assert "ValueError: item 4 is bad; to run what did not finish" in res.stderr
    assert run.status.value == "FAILURE"
    failures = [
        (e.step_key, e.dagster_event.step_failure_data.user_failure_data.description)
        for e in ws.dagster_events(run.run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
    ]
    assert len(failures) == 1 and failures[0][0].endswith("chunk_body[tasks_3_to_5]"), failures
    assert f"(task {mf_run}/body/body-4) (retry 1)" in failures[0][1]
    assert "item 4 is bad" in failures[0][1]
    body = {t.id: t for t in Run(f"ChunkedFlow/{mf_run}", _namespace_check=False)["body"]}
    # the chunk stops at its failed task (the run fails, as natively): body-5 never ran
    assert "body-5" not in body and body["body-3"].successful and not body["body-4"].successful
    assert body["body-4"].current_attempt == 1


def _native_then_compiled(ws: Workspace, flow: str) -> dict:
    """A native run with the `--marker` parameter the Dagster runs get (no file yet), then
    the deployment: the native run's artifacts."""
    ws.metaflow("run", "--marker", str(ws.dir / "fail"))
    native = _artifacts(latest_run_pathspec(flow))
    ws.compile()
    return native


def _failed_while_marked(ws: Workspace, marked: str, env: dict[str, str]) -> tuple[str, Any]:
    """A `trigger --wait` that fails while the flow's `--marker` file exists (holding
    `marked`), then the file removed: (the failed Metaflow run's id, the command's result)."""
    marker = ws.dir / "fail"
    marker.write_text(marked)
    res = ws.metaflow("dagster", "trigger", "--wait", "--marker", str(marker), "--run-id-file", "first", check=False, **env)
    marker.unlink()
    assert res.returncode != 0
    return (ws.dir / "first").read_text(), res


@pytest.mark.flow("chunked_flow.py")
def test_a_two_step_body_reexecutes_from_failure_in_either_path(workspace: Workspace) -> None:
    """A foreach whose body is two plain steps has two op families per body step (one op per
    task, one per chunk); a run takes one. Re-executed from a failure after the body (the
    join), one op per task and in chunks, the join and what follows run and every body task
    is cloned, the second step's too (Dagster lists the unused family's op as unresolved: it
    must not make the step's tasks run again). A failure inside the body: the nested test
    below, and test_deploy.py's re-execution (a one-step body)."""
    from metaflow import Run

    ws = workspace
    native = _native_then_compiled(ws, "ChunkedFlow")
    for env in ({}, CHUNKED):
        origin, res = _failed_while_marked(ws, "join", env)
        assert "is bad while the marker exists" in res.stderr, res.stderr[-2000:]
        child_id, ok = ws.reexecute_from_failure(ws.dir / "out_dagster.py", "ChunkedFlow", ws.last_dagster_run().run_id, **env)
        assert ok, env
        child = f"ChunkedFlow/{metaflow_run_id(child_id)}"
        assert _artifacts(child) == native, env
        run = Run(child, _namespace_check=False)
        for step in ("body", "post"):
            for i in range(7):
                assert run[step][f"{step}-{i}"].metadata_dict.get("origin-run-id") == origin, (env, step, i)
        assert "origin-task-id" not in run["join"]["join"].metadata_dict
        ran = ws.step_keys(child_id, "STEP_SUCCESS")
        assert not any(k.startswith(("op_body", "op_post", "chunk_")) for k in ran), (env, ran)


# 2 rows of 3 cells; in chunks of two per row: tasks_0_to_1_in_<row>, tasks_2_to_2_in_<row>
NESTED_CHUNKED = chunked_env(2, above=2)


@pytest.mark.flow("nested_chunked_flow.py")
def test_a_nested_two_step_body_resumes_and_reexecutes_from_failure_in_chunks(workspace: Workspace) -> None:
    """The inner foreach's cells in chunks of each row's cells (a chunk never spans two rows,
    so its key names its tasks). Through plain `flow.py step` processes: the failed run names
    the task; `dagster resume` clones every cell but the failed one; Dagster's re-execution
    from failure runs only the failed op's tasks and what follows, cloning the rest (the
    body's second step too, whose other op family Dagster lists unresolved); both equal
    native. (One op per task: test_random_flows_e2e re-executes a nested flow both ways.)"""
    from metaflow import Run

    ws = workspace
    env = NESTED_CHUNKED
    native = _native_then_compiled(ws, "NestedChunkedFlow")
    origin, res = _failed_while_marked(ws, "", {**env, "DAGSTER_METAFLOW_FORK": "0"})
    parent = ws.last_dagster_run()
    assert f"(task {origin}/cell/cell-1-2)" in res.stderr and "cell 1-2 is bad" in res.stderr, res.stderr[-2000:]
    failed_op = "chunk_cell[tasks_2_to_2_in_1]"
    failed = ws.step_keys(parent.run_id, "STEP_FAILURE")
    assert failed == {failed_op}, failed
    succeeded = ws.step_keys(parent.run_id, "STEP_SUCCESS")
    assert {"chunk_cell[tasks_0_to_1_in_0]", "chunk_post[tasks_0_to_1_in_0]", "chunk_cell[tasks_2_to_2_in_0]"} <= succeeded
    assert not any(k.startswith(("op_cell", "op_post")) for k in succeeded)
    cells = Run(f"NestedChunkedFlow/{origin}", _namespace_check=False)["cell"]
    assert cells["cell-0-1"].current_attempt == 1  # retried (in its chunk), as natively

    # resume: a new Metaflow run; every cell that succeeded is cloned, cell 1-2 runs
    ws.metaflow("dagster", "resume", "--origin-run-id", origin, "--wait", "--run-id-file", "second", **env)
    second = f"NestedChunkedFlow/{(ws.dir / 'second').read_text()}"
    assert _artifacts(second) == native
    tasks = {t.id: t for t in Run(second, _namespace_check=False)["cell"]}
    assert tasks["cell-0-2"].metadata_dict.get("origin-run-id") == origin
    assert "origin-task-id" not in tasks["cell-1-2"].metadata_dict

    # Dagster's re-execution from failure: only the failed op and what follows it run
    child_id, ok = ws.reexecute_from_failure(ws.dir / "out_dagster.py", "NestedChunkedFlow", parent.run_id, **env)
    assert ok
    child = f"NestedChunkedFlow/{metaflow_run_id(child_id)}"
    assert _artifacts(child) == native
    ran = ws.step_keys(child_id, "STEP_SUCCESS")
    assert failed_op in ran and not {"chunk_cell[tasks_0_to_1_in_0]", "op_cell[0_0]"} & ran
    run = Run(child, _namespace_check=False)
    for step, cloned in [("cell", "0-0"), ("cell", "0-1"), ("cell", "1-1"), ("post", "0-0"), ("post", "1-1")]:
        assert run[step][f"{step}-{cloned}"].metadata_dict.get("origin-run-id") == origin, (step, cloned)
    assert "origin-task-id" not in run["cell"]["cell-1-2"].metadata_dict
