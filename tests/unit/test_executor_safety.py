"""The thread executor's safety net: a run never succeeds unless the op of `end` did."""

from __future__ import annotations

from dagster import DagsterInstance, Out, Output, execute_job, job, op, reconstructable

from dagster_metaflow.runtime import metaflow_executor


@op(out={"taken": Out(str, is_required=False), "other": Out(str, is_required=False)})
def route() -> object:
    yield Output("x", "taken")


@op
def branch(v: str) -> str:
    return v


@op(tags={"metaflow/step": "end", "metaflow/end": "true"})
def op_end(v: str) -> None:
    pass


@job(executor_def=metaflow_executor)
def skips_end() -> None:
    _taken, other = route()
    op_end(branch(other))


@job(executor_def=metaflow_executor)
def reaches_end() -> None:
    taken, _other = route()
    op_end(branch(taken))


def test_run_fails_when_end_was_skipped() -> None:
    with DagsterInstance.ephemeral() as instance:
        bad = execute_job(reconstructable(skips_end), instance)
        good = execute_job(reconstructable(reaches_end), instance)
        assert good.success
        assert not bad.success
        failure = next(e for e in bad.all_events if e.event_type_value == "PIPELINE_FAILURE")
        assert "did not reach its end step: op_end did not run" in str(failure.event_specific_data)
