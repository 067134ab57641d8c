"""FlowIR -> Dagster definitions source text.

Codegen never touches Metaflow objects: it turns the IR into a small render model (ops,
job wiring lines) and renders `templates/definitions.py.j2`, inserting every value with
`repr` (the `py` filter) so any step name, parameter name or default stays valid Python.
The result is checked with `ast.parse` before it is returned.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

import jinja2

from . import naming
from .ir import FlowIR, StepIR
from .wiring import HelperOp, StepWiring, WiringError, plan


class CodegenError(Exception):
    """The IR describes a shape this version cannot compile (message names the step)."""


# `--executor` values served by an executor of a Dagster integration package:
# (module to import it from, executor definition)
ENGINE_EXECUTORS = {
    "celery": ("dagster_celery", "celery_executor"),
    "k8s": ("dagster_k8s", "k8s_job_executor"),
}

# Names the generated module defines or imports at top level; variables must not shadow them.
MODULE_NAMES = frozenset(
    {
        "annotations",
        "Path",
        "Config",
        "Field",
        "Definitions",
        "DynamicOut",
        "OpExecutionContext",
        "RetryPolicy",
        "job",
        "op",
        "MetaflowFlow",
        "metaflow_executor",
        "metaflow_io_manager",
        "metaflow_shared_io_manager",
        "executor_with_defaults",
        "with_metaflow_run_end",
        "celery_executor",
        "k8s_job_executor",
        "multiprocess_executor",
        "in_process_executor",
        "FLOW",
        "TAGS",
        "_run_step",
        "_init_run",
        "_fan_out",
        "_run_id",
        "_task_id",
        "_split_index",
        "_fan_out_all",
        "_regroup",
        "_switch",
        "_run_loop",
        "_mapper_tasks",
        "Out",
        "ScheduleDefinition",
        "DefaultScheduleStatus",
        "DefaultSensorStatus",
        "SensorEvaluationContext",
        "sensor",
        "Trigger",
        "TRIGGERS",
        "evaluate_triggers",
        "defs",
        "context",
        "config",
        "upstream",
        "upstreams",
        "run_id",
        "task",
    }
)


@dataclass
class OpModel:
    """Everything the template needs to render one `@op`."""

    decorator_args: list[str]
    signature: str
    body: list[str]


@dataclass
class RenderModel:
    ir: FlowIR
    ops: list[OpModel]
    job_function: str
    job_decorator_args: list[str]
    wiring: list[str]
    imports: list[str]
    flow_kwargs: list[tuple[str, str]]
    # (step, its next steps): every finished task's self.next() is checked against them
    transitions: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    parameters: list[str] = field(default_factory=list)  # Config class field lines
    uses_field: bool = False
    runtime_imports: list[str] = field(default_factory=list)
    engine_import: tuple[str, str] | None = None  # (module, executor) of a distributed executor
    uses_nesting: bool = False  # fanout_*/regroup_* helpers present
    uses_switch: bool = False
    uses_parallel: bool = False
    automation: AutomationModel | None = None


@dataclass
class AutomationModel:
    """Schedule and sensor of the deployment (@schedule, @trigger, @trigger_on_finish)."""

    schedule_name: str | None = None
    schedule_args: list[str] = field(default_factory=list)
    sensor_name: str | None = None
    sensor_args: list[str] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)  # `Trigger(...)` expressions
    start_op: str = "op_start"


def py(value: Any) -> str:
    """Python literal for `value` (the template's `py` filter); valid for any input value."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return f"float({str(value)!r})"
    if isinstance(value, tuple):
        inner = ", ".join(py(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(py(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py(k)}: {py(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        text = repr(value)
        if text.startswith("'") and '"' not in value:
            # prefer double quotes, as formatters do; repr already escaped everything else
            text = '"' + text[1:-1].replace("\\'", "'") + '"'
        return text
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    raise CodegenError(f"internal error: cannot write {type(value).__name__} value {value!r}")


def _op_decorator_args(step: StepIR, w: StepWiring) -> list[str]:
    args: list[str] = []
    if w.dynamic_out:
        args.append("out=DynamicOut(str)")
    if w.switch_outputs:
        outs = ", ".join(f"{py(name)}: Out(str, is_required=False)" for _t, name in w.switch_outputs)
        args.append("out={" + outs + "}")
    if step.doc:
        args.append(f"description={py(step.doc)}")
    if step.retry is not None and not step.is_recursive:
        delay = f", delay={step.retry.delay_seconds}" if step.retry.delay_seconds else ""
        args.append(f"retry_policy=RetryPolicy(max_retries={step.retry.max_retries}{delay})")
    tags: dict[str, str] = {}
    if step.timeout_seconds and not step.launcher:
        tags["dagster/op_execution_timeout"] = str(step.timeout_seconds)
    tags["metaflow/step"] = step.name
    if step.kind == "end":
        tags["metaflow/end"] = "true"  # the executor checks that the run reached it
    for key, value in step.resources:
        tags[f"metaflow/resources/{key}"] = value
    if step.launcher:
        tags["metaflow/launcher"] = step.launcher  # @kubernetes, @batch, @conda, @pypi
    args.append(f"tags={py(tags)}")
    return args


def _is_foreach_child(step: StepIR, ir: FlowIR) -> bool:
    return any(ir.step(p).kind == "foreach" for p in step.in_steps)


def _op_model(step: StepIR, ir: FlowIR, w: StepWiring) -> OpModel:
    """One `@op` for one step, shaped by where the wiring placed it."""
    body: list[str] = []
    # the Metaflow run comes from the Dagster run, never from an input: a re-execution
    # reuses inputs of its parent run but writes a new Metaflow run
    body.append("run_id = _run_id(context)")
    if w.input_form == "none":
        sig_inputs = f", config: {ir.config_class_name}" if ir.parameters else ""
        cfg = "config" if ir.parameters else "None"
        body.append(f"upstream = _init_run(context, run_id, {cfg}, tags=TAGS)")
        upstream_arg = "upstream"
    elif w.input_form == "single":
        sig_inputs = ", upstream: str"
        upstream_arg = "_mapper_tasks(upstream)" if w.parallel_join else "upstream"
    elif w.input_form == "list":
        sig_inputs = ", upstreams: list[str]"
        upstream_arg = "upstreams"
    elif w.input_form == "lists":
        sig_inputs = "".join(f", {n}: list[str]" for n in w.input_names)
        upstream_arg = "[" + ", ".join(f"*{n}" for n in w.input_names) + "]"
    else:
        sig_inputs = "".join(f", {n}: str" for n in w.input_names)
        upstream_arg = "[" + ", ".join(w.input_names) + "]"
    task_arg = f"_task_id(context, {py(step.name)})" if w.in_map else py(naming.task_id_for(step.name))
    kwargs = [
        "retry_count=context.retry_number",
        f"max_user_code_retries={step.max_user_code_retries}",
        "tags=TAGS",
        f"extra_env={py(dict(step.env))}",
    ]
    if step.timeout_seconds and not step.launcher:
        # a launched task (remote, or in a @conda/@pypi environment) enforces @timeout itself:
        # its op's time also counts a pod's start or an environment's creation
        kwargs.append(f"timeout={step.timeout_seconds}")
    if step.launcher:
        kwargs.append(f"launcher={py(step.launcher)}")
    if w.ubf_control:
        kwargs.append('ubf_context="ubf_control"')
    elif _is_foreach_child(step, ir):
        kwargs.append("split_index=_split_index(context)")
    if step.decorator_specs:
        kwargs.append(f"decorator_specs={py(step.decorator_specs)}")
    head = f"    context, {py(step.name)}, run_id, {upstream_arg}, {task_arg},"
    targets = {t: name for t, name in w.switch_outputs}
    signature = f"def {step.op_name}(context: OpExecutionContext{sig_inputs})"
    if step.is_recursive:
        # a loop retries each iteration itself (attempts per iteration, as natively)
        loop_kwargs = [kw for kw in kwargs if not kw.startswith("retry_count=")]
        if step.retry is not None:
            loop_kwargs.append(f"max_retries={step.retry.max_retries}")
            if step.retry.delay_seconds:
                loop_kwargs.append(f"retry_delay={step.retry.delay_seconds}")
        if w.switch_always:
            loop_kwargs.append("always=True")
        body += [
            "yield from _run_loop(",
            head,
            f"    outputs={py(targets)},",
            *[f"    {kw}," for kw in loop_kwargs],
            ")",
        ]
        signature += ":"
    else:
        call = ["_run_step(", head, *[f"    {kw}," for kw in kwargs], ")"]
        if w.dynamic_out:
            body += ["task = " + call[0], *call[1:], "yield from _fan_out(context, task)"]
            signature += ":"
        elif w.switch_outputs:
            always = ", always=True" if w.switch_always else ""
            body += ["task = " + call[0], *call[1:], f"yield from _switch(context, task, {py(targets)}{always})"]
            signature += ":"
        else:
            body += ["return " + call[0], *call[1:]]
            signature += " -> str:"
    return OpModel(decorator_args=_op_decorator_args(step, w), signature=signature, body=body)


def _helper_model(h: HelperOp) -> OpModel:
    """A fanout_*/regroup_* op: Dagster plumbing for nested levels, no Metaflow task."""
    if h.kind == "fanout":
        doc = f"Fan out the children of every {h.step!r} task (nested foreach)."
        args = ["out=DynamicOut(str)", f"description={py(doc)}", f"tags={py({'metaflow/fanout': h.step})}"]
        sig = f"def {h.name}(context: OpExecutionContext, upstreams: list[str]):"
        body = ["yield from _fan_out_all(context, upstreams)"]
    else:
        doc = f"Group the inputs of {h.step!r} per outer foreach index."
        args = ["out=DynamicOut(list)", f"description={py(doc)}", f"tags={py({'metaflow/regroup': h.step})}"]
        ins = "".join(f", {n}: list[str]" for n in h.input_names)
        sig = f"def {h.name}(context: OpExecutionContext{ins}):"
        body = [f"yield from _regroup(context, {h.depth}, {', '.join(h.input_names)})"]
    return OpModel(decorator_args=args, signature=sig, body=body)


def build_render_model(ir: FlowIR) -> RenderModel:
    """Turn the IR into the pieces the template prints."""
    taken = set(MODULE_NAMES) | {s.op_name for s in ir.steps} | {ir.config_class_name}
    job_fn = naming.python_identifier(ir.flow_name, taken)
    try:
        wiring = plan(ir, taken | {job_fn})
    except WiringError as exc:
        raise CodegenError(str(exc)) from None
    taken |= {h.name for h in wiring.helpers}
    ops = [_op_model(s, ir, wiring.steps[s.name]) for s in ir.steps]
    ops += [_helper_model(h) for h in wiring.helpers]

    job_tags = {"metaflow/flow": ir.flow_name}
    auto = ir.automation
    if auto.project_name:
        job_tags["metaflow/project"] = auto.project_name
        job_tags["metaflow/branch"] = auto.branch_name or ""
    if ir.workflow_timeout:
        job_tags["dagster/max_runtime"] = str(ir.workflow_timeout)
    executor_cfg: dict[str, Any] = {"max_concurrent": ir.max_workers}
    executor_name = "metaflow_executor"
    if ir.executor == "threads":
        if ir.workflow_timeout:
            executor_cfg["workflow_timeout"] = ir.workflow_timeout
    elif ir.executor in ("multiprocess", "forkserver"):
        executor_name = "multiprocess_executor"
        if ir.executor == "forkserver":
            executor_cfg["start_method"] = {"forkserver": {}}
    elif ir.executor == "in_process":
        executor_name, executor_cfg = "in_process_executor", {}
    elif ir.executor in ENGINE_EXECUTORS:
        executor_name = ENGINE_EXECUTORS[ir.executor][1]
        executor_cfg = dict(ir.executor_config)
    else:
        raise CodegenError(f"unknown executor {ir.executor!r}")
    engine = ENGINE_EXECUTORS.get(ir.executor)
    job_args = [f"name={py(ir.job_name)}"]
    if ir.doc:
        job_args.append(f"description={py(ir.doc)}")
    # the deployment's values are defaults a launch may still override in run config
    executor_expr = (
        f"executor_with_defaults({executor_name}, {py(executor_cfg)})" if executor_cfg else executor_name
    )
    # Dagster's executors know nothing of the Metaflow run's end (@exit_hook, reaching `end`)
    run_end = executor_name != "metaflow_executor"
    job_args.append(f"executor_def=with_metaflow_run_end({executor_expr})" if run_end else f"executor_def={executor_expr}")
    # ops of a distributed executor share only the instance, not the run worker's disk
    io_manager = "metaflow_shared_io_manager" if engine is not None else "metaflow_io_manager"
    job_args.append(f'resource_defs={{"io_manager": {io_manager}}}')
    job_args.append(f"tags={py(job_tags)}")

    imports = ["Definitions", "OpExecutionContext", "job", "op"]
    if executor_name != "metaflow_executor" and engine is None:
        imports.append(executor_name)
    uses_field = any(p.help or p.field_name != p.name for p in ir.parameters)
    if ir.parameters:
        imports.append("Config")
    if any(w.dynamic_out for w in wiring.steps.values()) or wiring.helpers:
        imports.append("DynamicOut")
    if any(w.switch_outputs for w in wiring.steps.values()):
        imports.append("Out")
    if any(s.retry and not s.is_recursive for s in ir.steps):
        imports.append("RetryPolicy")

    automation = _automation_model(ir, job_fn, taken | {job_fn})
    runtime_imports = ["MetaflowFlow"]
    if automation is not None:
        if automation.schedule_name:
            imports += ["ScheduleDefinition", "DefaultScheduleStatus"]
        if automation.sensor_name:
            imports += ["sensor", "SensorEvaluationContext", "DefaultSensorStatus"]
            runtime_imports += ["Trigger", "evaluate_triggers"]

    params = []
    for p in ir.parameters:
        annotation = {"int": "int", "float": "float", "bool": "bool", "str": "str", "json": "str"}[p.type]
        if not p.required and not p.has_default:
            annotation = f"{annotation} | None"
        field_args = [] if p.required else [f"default={py(p.default)}"]
        if p.field_name != p.name:
            field_args.append(f"alias={py(p.name)}")
        if p.help:
            field_args.append(f"description={py(p.help)}")
        line = f"{p.field_name}: {annotation}"
        if len(field_args) == 1 and not p.required and field_args[0].startswith("default="):
            line += f" = {py(p.default)}"
        elif field_args:
            line += f" = Field({', '.join(field_args)})"
        params.append(line)

    flow_kwargs: list[tuple[str, str]] = [
        ("name", py(ir.flow_name)),
        ("file", py(ir.flow_file)),
        ("relative_to", "str(Path(__file__).resolve().parent)"),
        ("top_level_args", py(tuple(ir.top_level_args))),
        ("environment", py(dict(ir.environment))),
        ("tags", "tuple(TAGS)"),
        ("namespace", py(ir.namespace)),
        ("owner", py(ir.owner)),
        ("production_token", py(ir.production_token)),
    ]
    if ir.config_values:
        flow_kwargs.append(("config_values", py(ir.config_values)))
    if ir.flow_fingerprint:
        flow_kwargs.append(("flow_fingerprint", py(ir.flow_fingerprint)))
    switch_steps = tuple(s.name for s in ir.steps if s.kind == "switch")
    if switch_steps:
        flow_kwargs.append(("switch_steps", py(switch_steps)))
    card_steps = tuple(s.name for s in ir.steps if s.has_card)
    if card_steps:
        flow_kwargs.append(("card_steps", py(card_steps)))
    hooks = ir.automation.exit_hooks
    if hooks is not None:
        flow_kwargs += [
            ("job_name", py(ir.job_name)),
            ("exit_hooks_on_success", py(hooks.on_success)),
            ("exit_hooks_on_error", py(hooks.on_error)),
        ]
    flow_kwargs += [(k, py(v)) for k, v in ir.datastore_kwargs]
    flow_kwargs.append(
        (
            "parameters",
            py(tuple((p.field_name, p.env_var, p.type) for p in ir.parameters)),
        )
    )
    return RenderModel(
        ir=ir,
        ops=ops,
        job_function=job_fn,
        job_decorator_args=job_args,
        wiring=["    " + ln if ln else "" for ln in wiring.body],
        imports=sorted(imports, key=lambda n: (n[0].islower(), n.lower())),
        runtime_imports=sorted(
            runtime_imports
            + (["executor_with_defaults"] if executor_cfg else [])
            + (["with_metaflow_run_end"] if run_end else [])
            + (["metaflow_executor"] if executor_name == "metaflow_executor" else [])
            + [io_manager]
        ),
        engine_import=engine,
        flow_kwargs=flow_kwargs,
        transitions=[(s.name, s.next_steps) for s in ir.steps],
        parameters=params,
        uses_field=uses_field,
        uses_nesting=bool(wiring.helpers),
        uses_switch=any(w.switch_outputs for w in wiring.steps.values()),
        uses_parallel=any(w.parallel_join for w in wiring.steps.values()),
        automation=automation,
    )


def _automation_model(ir: FlowIR, job_fn: str, taken: set[str]) -> AutomationModel | None:
    """ScheduleDefinition / sensor arguments for the flow's automation decorators."""
    auto = ir.automation
    if auto.schedule is None and not auto.triggers:
        return None
    model = AutomationModel(start_op=ir.step(ir.start_step).op_name)
    run_tags = py({"dagster-metaflow/deployment": ir.job_name})
    if auto.schedule is not None:
        sched = auto.schedule
        model.schedule_name = naming.python_identifier(f"{job_fn}_schedule", taken)
        taken.add(model.schedule_name)
        model.schedule_args = [
            f"name={py(ir.job_name + '_schedule')}",
            f"job={job_fn}",
            f"cron_schedule={py(sched.cron)}",
        ]
        if sched.timezone:
            model.schedule_args.append(f"execution_timezone={py(sched.timezone)}")
        model.schedule_args += [
            "default_status=DefaultScheduleStatus.RUNNING",
            f"tags={run_tags}",
            f"description={py(f'@schedule of {ir.flow_name}: {sched.metaflow_cron}')}",
        ]
    if auto.triggers:
        types = {p.name: p.type for p in ir.parameters}
        on_finish = auto.triggers[0].kind == "run"
        model.sensor_name = naming.python_identifier(
            f"{job_fn}_{'trigger_on_finish' if on_finish else 'trigger'}", taken
        )
        for t in auto.triggers:
            args = [py(t.name)]
            if t.kind == "run":
                args += ['kind="run"', f"flow={py(t.flow)}"]
                if t.project:
                    args += [f"project={py(t.project)}", f"branch={py(t.branch)}"]
            mapping = tuple((p, k, types[p], required) for p, k, required in t.parameters)
            if mapping:
                args.append(f"parameters={py(mapping)}")
            model.triggers.append(f"Trigger({', '.join(args)})")
        what = " and ".join(t.name for t in auto.triggers)
        model.sensor_args = [
            f"job={job_fn}",
            f"name={py(ir.job_name + ('_trigger_on_finish' if on_finish else '_trigger'))}",
            "minimum_interval_seconds=5",
            "default_status=DefaultSensorStatus.RUNNING",
            f"description={py(f'Starts {ir.job_name} when {what} occurred')}",
        ]
    return model


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("dagster_metaflow", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_ENV.filters["py"] = py


def doctext(value: Any) -> str:
    """`value` as text that is safe inside the generated module's \"\"\"docstring\"\"\": one line,
    backslashes, control characters and non-ASCII escaped, quotes escaped."""
    return str(value).encode("unicode_escape").decode("ascii").replace('"', '\\"')


_ENV.filters["doc"] = doctext


def render(ir: FlowIR) -> str:
    """Render the definitions file for `ir`; raises CodegenError on unsupported shapes."""
    model = build_render_model(ir)
    text = _ENV.get_template("definitions.py.j2").render(m=model, ir=ir)
    try:
        ast.parse(text)
    except SyntaxError as exc:  # a bug here, never the user's fault: say so loudly
        raise CodegenError(f"internal error: generated code does not parse: {exc}") from exc
    return text

