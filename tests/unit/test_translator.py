"""Op, job, schedule and sensor specs are data: what the translator decides, per attribute,
checked without rendering; and the names the generated module reserves, derived."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from conftest import load_flow_class

from dagster_metaflow.automation import ScheduleIR, TriggerIR
from dagster_metaflow.codegen import TEMPLATE_BINDINGS, reserved_names, template_bindings
from dagster_metaflow.ir import FlowIR, IROptions, build_flow_ir
from dagster_metaflow.op_specs import (
    DefinitionsSpec,
    FanOut,
    FanOutAll,
    Import,
    ImportBlock,
    InitRun,
    OpInput,
    OpOutput,
    OpSpec,
    Regroup,
    RetryPolicySpec,
    RunId,
    RunLoop,
    RunStep,
    Switch,
    Task,
    Upstream,
)
from dagster_metaflow.task_options import StepOptions
from dagster_metaflow.translator import CodegenError, Translator


def _ir(filename: str, **opts: Any) -> FlowIR:
    from metaflow.graph import FlowGraph

    cls = load_flow_class(filename, "translator")
    options = IROptions(job_name=cls.__name__, flow_file=filename, **opts)
    return build_flow_ir(cls, FlowGraph(cls), options)


def _spec(filename: str, **opts: Any) -> DefinitionsSpec:
    return Translator(_ir(filename, **opts), reserved_names()).definitions()


def _op(spec: DefinitionsSpec, name: str) -> OpSpec:
    return next(o for o in spec.ops if o.name == name)


def _upstream() -> Upstream:
    return Upstream("name", ("upstream",))


def test_a_step_op_with_retry_timeout_and_environment() -> None:
    spec = _spec("retry_flow.py")
    options = StepOptions(
        max_user_code_retries=2, extra_env={"MY_VAR": "hello", "OTHER": "world"}, timeout=120
    )
    assert _op(spec, "op_process") == OpSpec(
        name="op_process",
        dagster_name="RetryFlow__op_process",
        inputs=(OpInput("upstream", "str"),),
        output=OpOutput("value"),
        body=(RunId(), RunStep(Task("process", _upstream(), "process", options, False), "return")),
        tags={"dagster/op_execution_timeout": "120", "metaflow/step": "process"},
        retry_policy=RetryPolicySpec(max_retries=2),
    )
    start = _op(spec, "op_start")
    assert start.inputs == () and start.config is None
    assert start.body[:2] == (RunId(), InitRun("upstream", with_config=False))
    assert _op(spec, "op_end").tags == {"metaflow/step": "end", "metaflow/end": "true"}


def test_a_loop_retries_each_iteration_itself() -> None:
    op = _op(_spec("shapes/recursive_retry_flow.py"), "op_loop")
    assert op.retry_policy is None and op.output == OpOutput("loop", names=("to_end",))
    (loop,) = op.body[1:]
    assert isinstance(loop, RunLoop)
    assert (loop.outputs, loop.max_retries, loop.retry_delay, loop.always) == (
        {"end": "to_end"},
        1,
        None,
        False,
    )
    assert loop.task.options.max_user_code_retries == 1


def test_foreach_switch_and_helper_ops() -> None:
    spec = _spec("shapes/nested_switch_flow.py")
    start = _op(spec, "op_start")
    assert start.output == OpOutput("dynamic") and start.body[-1] == FanOut()
    cell = _op(spec, "op_cell")
    run, switch = cell.body[1:]
    assert isinstance(run, RunStep) and run.result == "task"
    assert run.task.task_id is None and run.task.split_index  # from the mapping key
    assert switch == Switch({"on_diag": "to_on_diag", "off_diag": "to_off_diag"}, always=True)
    assert cell.output == OpOutput("switch", names=("to_on_diag", "to_off_diag"))
    merge = _op(spec, "op_cell_done")
    assert merge.inputs == (OpInput("off_diag", "str"), OpInput("on_diag", "str"))
    assert isinstance(merge.body[1], RunStep)
    assert merge.body[1].task.upstream == Upstream("items", ("off_diag", "on_diag"))
    assert _op(spec, "fanout_row") == OpSpec(
        name="fanout_row",
        dagster_name=spec.job.name + "__fanout_row",
        inputs=(OpInput("upstreams", "list"),),
        output=OpOutput("dynamic"),
        body=(FanOutAll("upstreams"),),
        tags={"metaflow/fanout": "row"},
        description="Fan out the children of every 'row' task (nested foreach).",
    )
    regroup = _op(spec, "regroup_row_join")
    assert regroup.output == OpOutput("dynamic", item="list")
    assert regroup.body == (Regroup(1, ("from_0",)),)
    assert spec.uses_nesting and spec.uses_switch and not spec.uses_parallel


def test_parallel_control_task_and_its_join() -> None:
    spec = _spec("shapes/parallel_flow.py")
    train = _op(spec, "op_train").body[1]
    assert isinstance(train, RunStep) and train.task.options.ubf_context == "ubf_control"
    assert not train.task.split_index
    gather = _op(spec, "op_gather").body[1]
    assert isinstance(gather, RunStep)
    assert gather.task.upstream == Upstream("mapper_tasks", ("upstream",))
    assert spec.uses_parallel


@pytest.mark.parametrize(
    ("executor", "name", "config", "run_end", "io_manager"),
    [
        ("threads", "metaflow_executor", {"max_concurrent": 3, "workflow_timeout": 60}, False, "metaflow_io_manager"),
        ("multiprocess", "multiprocess_executor", {"max_concurrent": 3}, True, "metaflow_io_manager"),
        ("forkserver", "multiprocess_executor", {"max_concurrent": 3, "start_method": {"forkserver": {}}}, True, "metaflow_io_manager"),
        ("in_process", "in_process_executor", {}, True, "metaflow_io_manager"),
        ("celery", "celery_executor", {"broker": "redis://x"}, True, "metaflow_shared_io_manager"),
    ],
)  # fmt: skip
def test_executor_per_executor_option(
    executor: str, name: str, config: dict[str, Any], run_end: bool, io_manager: str
) -> None:
    opts: dict[str, Any] = {"executor": executor, "max_workers": 3, "workflow_timeout": 60}
    if executor == "celery":
        opts["executor_config"] = {"broker": "redis://x"}
    job = _spec("linear_flow.py", **opts).job
    assert (job.executor.definition.name, job.executor.config) == (name, config)
    assets = _spec("linear_flow.py", **opts).assets
    assert job.executor.run_end is run_end and assets.io_manager.name == io_manager
    assert job.tags == {"metaflow/flow": "LinearFlow", "dagster/max_runtime": "60"}


def test_unknown_executor_is_refused() -> None:
    ir = dataclasses.replace(_ir("linear_flow.py"), executor="dask")
    with pytest.raises(CodegenError, match="unknown executor 'dask'"):
        Translator(ir, reserved_names()).definitions()


def test_imports_follow_from_what_the_specs_use() -> None:
    plain = _spec("linear_flow.py").imports
    assert plain == (
        ImportBlock("pathlib", ("Path",), parenthesized=False),
        ImportBlock(
            "dagster",
            (
                "AssetOut", "Definitions", "OpExecutionContext", "Out",
                "define_asset_job", "graph_multi_asset", "op",
            ),
            parenthesized=True,
        ),  # fmt: skip
        ImportBlock(
            "dagster_metaflow.runtime",
            ("MetaflowFlow", "executor_with_defaults", "metaflow_executor", "metaflow_io_manager"),
            parenthesized=False,
        ),
    )
    modules = [b.module for b in _spec("params_flow.py", executor="celery").imports]
    assert modules == [
        "pathlib",
        "dagster",
        "dagster_celery",
        "pydantic",
        "dagster_metaflow.runtime",
    ]
    names = {n for b in _spec("retry_flow.py").imports for n in b.names}
    assert "RetryPolicy" in names and "DynamicOut" not in names and "AssetIn" not in names


def test_config_fields() -> None:
    config = _spec("params_flow.py").config
    assert config is not None and config.class_name == "ParamsFlowParameters"
    fields = {f.name: f for f in config.fields}
    assert fields["learning_rate"].alias == "learning-rate" and fields["learning_rate"].uses_field
    assert fields["config_json"].type == "str" and fields["config_json"].default == '{"a": [1, 2]}'
    assert fields["maybe"].optional and not fields["maybe"].uses_field
    assert fields["needed"].required and fields["alpha"].description == "a float"


def test_schedule_and_sensor_specs() -> None:
    ir = _ir("linear_flow.py")
    auto = dataclasses.replace(
        ir.automation,
        schedule=ScheduleIR(
            cron="0 * * * *", timezone="Europe/Berlin", metaflow_cron="0 * * * ? *"
        ),
        triggers=(TriggerIR(name="metaflow.Up.end", kind="run", flow="Up"),),
    )
    spec = Translator(dataclasses.replace(ir, automation=auto), reserved_names()).definitions()
    assert spec.schedule is not None and spec.sensor is not None
    assert (spec.schedule.var, spec.schedule.name, spec.schedule.job_fn) == (
        "LinearFlow_schedule",
        "LinearFlow_schedule",
        "LinearFlow",
    )
    assert spec.schedule.description == "@schedule of LinearFlow: 0 * * * ? *"
    assert (spec.sensor.fn, spec.sensor.name) == (
        "LinearFlow_trigger_on_finish",
        "LinearFlow_trigger_on_finish",
    )
    assert spec.sensor.triggers[0].flow == "Up" and spec.sensor.start_op == "LinearFlow_steps.op_start"
    # the flow's asset reads Up's asset: lineage, and the start op waits for it
    assert [d.key for d in spec.assets.deps] == [("Up",)]
    blocks = {b.module: b.names for b in spec.imports}
    assert {"ScheduleDefinition", "sensor"} <= set(blocks["dagster"])
    assert {"Trigger", "evaluate_triggers"} <= set(blocks["dagster_metaflow.runtime"])


def test_reserved_names_are_derived_from_the_templates_and_the_specs() -> None:
    """The names a variable may not take: what the templates bind (pinned in
    `codegen.TEMPLATE_BINDINGS`, read from the templates here), every name a spec may import,
    the ops' fixed inputs. Pinned so that a template edit that changes them (and so the
    variable names of every generated file) is a visible decision."""
    assert template_bindings() == TEMPLATE_BINDINGS  # else: codegen.TEMPLATE_BINDINGS is stale
    assert reserved_names() - template_bindings() == {
        "Path", "Config", "Field", "Definitions", "DynamicOut", "OpExecutionContext",
        "RetryPolicy", "job", "op", "Out", "graph_multi_asset", "AssetOut", "AssetIn", "In",
        "Nothing", "define_asset_job", "AutomationCondition",
        "AutomationConditionSensorDefinition", "AssetSelection", "ScheduleDefinition", "DefaultScheduleStatus",
        "DefaultSensorStatus", "SensorEvaluationContext", "sensor", "MetaflowFlow", "Trigger",
        "evaluate_triggers", "metaflow_executor", "metaflow_io_manager",
        "metaflow_shared_io_manager", "executor_with_defaults", "with_metaflow_run_end",
        "celery_executor", "k8s_job_executor", "multiprocess_executor", "in_process_executor",
        "upstream", "upstreams", "chunks", "run_failure_sensor", "RunFailureSensorContext",
        "run_status_sensor", "RunStatusSensorContext", "DagsterRunStatus", "Notifications",
        "notify_from_sensor",
    }  # fmt: skip
    assert Import("dagster", "op") in {i for o in _spec("linear_flow.py").ops for i in o.imports()}


def test_workflow_priority_title_and_description_reach_the_job() -> None:
    """As Argo's --workflow-priority/--workflow-title/--workflow-description: a run priority
    tag the QueuedRunCoordinator honours, and the job's description (the docstring by default)."""
    plain = _spec("hello_flow.py")
    assert plain.job.description == _ir("hello_flow.py").doc and "dagster/priority" not in plain.job.tags
    spec = _spec(
        "hello_flow.py", workflow_priority=7, workflow_title="Nightly 'hello'", workflow_description=""
    )
    assert spec.job.tags["dagster/priority"] == "7" and spec.job.tags["metaflow/title"] == "Nightly 'hello'"
    assert spec.job.description == "Nightly 'hello'"  # an empty description drops the docstring
    both = _spec("hello_flow.py", workflow_title="T", workflow_description="What it does.")
    assert both.job.description == "T\n\nWhat it does."
