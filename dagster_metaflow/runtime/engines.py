"""Dagster's distributed executors with the deployment's settings as defaults.

`create --executor celery --executor-config '{"broker": ...}'` must bake the broker into the
job (so `trigger`, schedules and sensors need no run config) and still let a launch override
it in run config (`execution: {config: {broker: ...}}`), as Dagster allows for an
unconfigured executor. `ExecutorDefinition.configured` with a plain dict would freeze the
values; here the executor keeps its own config schema, with the deployment's values as the
fields' defaults.

`with_metaflow_run_end` gives any of them what the run needs once all steps ended, which the
threads executor does itself: the flow's @exit_hook functions (after success, a failed step or
termination) and the check that the run reached `end`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from typing import Any, cast

from dagster import DagsterEvent, Executor, ExecutorDefinition, Field, InitExecutorContext

from .._dagster_private import ExecutionPlan, PlanOrchestrationContext, RetryMode
from .notify import watchdog_env
from .run_end import RunOutcome, ending_on_error, finish_run
from .worker import watched


def executor_with_defaults(
    executor_def: ExecutorDefinition, defaults: Mapping[str, Any]
) -> ExecutorDefinition:
    """`executor_def` whose config fields named in `defaults` default to those values."""
    if not defaults:
        return executor_def
    fields = dict(executor_def.config_schema.config_type.fields)  # type: ignore[union-attr]
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise ValueError(
            f"executor {executor_def.name!r} has no config field {', '.join(map(repr, unknown))} "
            f"(its fields: {', '.join(sorted(fields))})"
        )
    for name, value in defaults.items():
        old = fields[name]
        fields[name] = Field(
            old.config_type,
            default_value=value,
            is_required=False,
            description=old.description,
        )
    return executor_def.configured(dict, config_schema=fields, name=executor_def.name)


class RunEndExecutor(Executor):
    """Another executor's steps, then the run's end as the threads executor handles it."""

    def __init__(self, inner: Executor) -> None:
        self._inner = inner

    @property
    def retries(self) -> RetryMode:
        return self._inner.retries

    @property
    def step_dependency_config(self) -> Any:
        return self._inner.step_dependency_config

    def __getattr__(self, name: str) -> Any:
        # the execution context hands *this* object to the wrapped executor's own loop, which
        # reads its settings from it (Celery's `core_celery_execution_loop` calls app_args())
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        outcome = RunOutcome()
        steps = self._steps(plan_context, execution_plan, outcome)
        yield from ending_on_error(plan_context, steps)
        yield from finish_run(plan_context, execution_plan, outcome)

    def _steps(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan, outcome: RunOutcome
    ) -> Generator[DagsterEvent, None, None]:
        """The inner executor's events under the run's watchdog, noted in `outcome`."""
        resumed = bool(getattr(plan_context, "resume_from_failure", False))
        notice = watchdog_env(plan_context)
        with watched(plan_context.instance, plan_context.dagster_run, resumed, notice):
            for event in self._inner.execute(plan_context, execution_plan):
                outcome.note(event)
                yield event


def with_metaflow_run_end(executor_def: ExecutorDefinition) -> ExecutorDefinition:
    """`executor_def` (same name, config and requirements) running the run-end duties."""
    create = executor_def.executor_creation_fn
    if create is None:
        raise ValueError(f"executor {executor_def.name!r} has no creation function")

    def create_with_run_end(init_context: InitExecutorContext) -> Executor:
        return RunEndExecutor(create(init_context))

    return ExecutorDefinition(
        name=executor_def.name,
        # the wrapped definition's schema object as is (Dagster accepts one, its stubs don't say)
        config_schema=cast(Any, executor_def.config_schema),
        requirements=executor_def.get_requirements,
        executor_creation_fn=create_with_run_end,
        description=executor_def.description,
    )
