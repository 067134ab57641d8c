"""The chunked fan-out (runtime/chunks.py): a foreach wider than the threshold runs its body
in chunk ops, and every task still matches `python flow.py run` with its own attempts,
@catch, log lines and failure. The threshold is forced low so a 7-wide foreach chunks."""

from __future__ import annotations

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
