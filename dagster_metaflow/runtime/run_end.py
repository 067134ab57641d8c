"""The end of a run, whichever executor ran its steps: what the run's events say about its
outcome, then the run-end duties in order (the @exit_hook functions, the run-finished
events, the notifications) and the safety net that a successful run reached `end`."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TypeVar

from dagster import DagsterEvent

from .._dagster_private import (
    EngineEventData,
    ExecutionPlan,
    PlanExecutionContext,
    PlanOrchestrationContext,
)
from .failures import TAG_ERROR, failure_reason
from .ids import op_nodes, op_of_step_key
from .notify import announce_run_end

RunContext = PlanExecutionContext | PlanOrchestrationContext
T = TypeVar("T")


class RunOutcome:
    """The steps that succeeded, and whether any failed, as the run's events go by."""

    def __init__(self) -> None:
        self.succeeded: set[str] = set()
        self.failed = False
        self.reason: str | None = None  # the first failure, one line

    def note(self, event: DagsterEvent) -> None:
        if event.is_step_success and event.step_key:
            self.succeeded.add(event.step_key)
        elif event.is_step_failure:
            self.failed = True
            self.reason = self.reason or failure_reason(event)


def tag_outcome(job_context: RunContext, tags: dict[str, str]) -> None:
    """Keep why the run failed on the run (`status`, `trigger --wait`, the Deployer, the UI);
    a storage that refuses the write never replaces the run's own outcome, which says it
    all the same."""
    try:
        job_context.instance.add_run_tags(job_context.run_id, tags)
    except Exception:
        pass


def finish_run(
    job_context: RunContext, plan: ExecutionPlan, outcome: RunOutcome
) -> Iterator[DagsterEvent]:
    """The run's end once every step is over (not interrupted), whichever executor ran them:
    the exit hooks, then the safety net on `end`."""
    successful = not outcome.failed and _end_op_succeeded(job_context, outcome.succeeded)
    if outcome.reason:
        tag_outcome(job_context, {TAG_ERROR: outcome.reason})
    yield from run_exit_hooks(job_context, successful)
    if successful:
        yield from emit_run_finished(job_context)
    reason = outcome.reason
    if not outcome.failed and not successful:
        reason = "the Metaflow run did not reach its end step"
    yield from announce_run_end(job_context, successful, reason)
    if not outcome.failed:  # a failed step already fails the run, with its own error
        _check_reached_end(job_context, plan, outcome.succeeded)


def ending_on_error(
    job_context: RunContext, events: Generator[DagsterEvent, None, T]
) -> Generator[DagsterEvent, None, T]:
    """`events` (an executor's), and what they return; if producing them fails (terminated,
    or the executor itself failed, e.g. a write of the run's events), the end duties of a
    failed run first (the on_error exit hooks, the notification), then the error. Not when
    whoever iterates stops listening: nothing more to say then."""
    try:
        return (yield from events)
    except GeneratorExit:
        raise
    except BaseException:
        yield from run_exit_hooks(job_context, successful=False)
        yield from announce_run_end(job_context, False, None)
        raise


def _end_ops(job_context: RunContext) -> set[str]:
    try:
        ops = op_nodes(job_context.job.get_definition().graph)
        return {name for name, op in ops.items() if op.tags.get("metaflow/end") == "true"}
    except Exception:
        return set()


def _end_op_succeeded(job_context: RunContext, succeeded: set[str]) -> bool:
    ends = _end_ops(job_context)
    return any(op_of_step_key(key) in ends for key in succeeded) or not ends


def run_exit_hooks(job_context: RunContext, successful: bool) -> Iterator[DagsterEvent]:
    """@exit_hook: the flow's on_success or on_error functions, once, when the run ends
    (failed steps and termination included), each as Metaflow runs it; output in the run's log."""
    from .flow import flow_of_context
    from .ids import metaflow_run_id

    flow = flow_of_context(job_context)
    if flow is None:
        return
    hooks = flow.exit_hooks_on_success if successful else flow.exit_hooks_on_error
    pathspec = f"{flow.name}/{metaflow_run_id(job_context.run_id)}"
    for name in hooks:
        try:
            ok, output = flow.run_exit_hook(name, pathspec)
        except Exception as exc:  # a hook never changes the run's outcome, as natively
            ok, output = False, f"{type(exc).__name__}: {exc}"
        outcome = "ran" if ok else "failed"
        yield DagsterEvent.engine_event(
            job_context,
            f"@exit_hook {name} ({'on_success' if successful else 'on_error'}) {outcome} for {pathspec}"
            + (f":\n{output}" if output else ""),
            EngineEventData(),
        )


def emit_run_finished(job_context: RunContext) -> Iterator[DagsterEvent]:
    """--auto-emit-events: the run-finished events (as Argo's), before the run's SUCCESS,
    so other deployments' @trigger start on them; a failure to publish is a warning."""
    from .flow import flow_of_context
    from .ids import metaflow_run_id, task_id_for
    from .sensors import (
        TAG_BRANCH,
        TAG_PROJECT,
        publish_event,
        run_finished_event_names,
        run_finished_payload,
    )

    flow = flow_of_context(job_context)
    # the end step: the one step without transitions
    end = next((step for step, nxt in flow.transitions.items() if not nxt), None) if flow else None
    if flow is None or end is None or not flow.auto_emit_events:
        return
    tags = job_context.dagster_run.tags
    project, branch = tags.get(TAG_PROJECT), tags.get(TAG_BRANCH)
    run_id = metaflow_run_id(job_context.run_id)
    payload = run_finished_payload(flow.name, run_id, end, task_id_for(end, None), project, branch)
    for name in run_finished_event_names(flow.name, end, project, branch):
        try:
            publish_event(name, payload, instance=job_context.instance)
            text = f"Published event {name}"
        except Exception as exc:  # the run's outcome stands
            text = f"Warning: event {name} not published: {type(exc).__name__}: {exc}"
        yield DagsterEvent.engine_event(job_context, text, EngineEventData())


class MetaflowRunIncomplete(Exception):
    """Every op ended without error but the Metaflow run did not reach its end step."""


def _check_reached_end(job_context: RunContext, plan: ExecutionPlan, succeeded: set[str]) -> None:
    """Safety net: a Dagster run succeeds only if the op of the flow's `end` step did (an
    op skipped for a missing input would otherwise leave the Metaflow run unfinished)."""
    end_ops = _end_ops(job_context)
    if not end_ops:
        return
    planned = {key for key in plan.step_keys_to_execute if op_of_step_key(key) in end_ops}
    missing = sorted(planned - succeeded)
    if missing:
        raise MetaflowRunIncomplete(
            f"the Metaflow run did not reach its end step: {', '.join(missing)} did not run "
            "(an op it depends on was skipped); this is a dagster-metaflow bug, please report it"
        )
