"""IR + wiring plan -> the specs of the generated module (op_specs.py).

Modelled on dagster-dbt's DagsterDbtTranslator: one `get_*` method per Dagster attribute
(an op's name, description, tags, retry policy, task options; the job's tags, executor,
io manager; the schedule and sensor), so each decision lives in exactly one place and a
subclass could change one of them. Nothing here writes Python source: the templates do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Literal

from . import naming
from .ir import FlowIR, StepIR
from .notifications import SERVICE_NAMES, Notifications, notify_sensor_name
from .op_specs import (
    DAGSTER,
    RUNTIME,
    UPSTREAM,
    UPSTREAMS,
    AssetDepSpec,
    AssetOutSpec,
    AssetsSpec,
    ConfigField,
    ConfigSpec,
    DefinitionsSpec,
    ExecutorSpec,
    FanOut,
    FanOutAll,
    FlowSpec,
    Import,
    InitRun,
    JobSpec,
    Materialize,
    NotifySensorSpec,
    OpInput,
    OpOutput,
    OpSpec,
    Regroup,
    RetryPolicySpec,
    RunChunk,
    RunId,
    RunLoop,
    RunStep,
    RuntimeCall,
    ScheduleSpec,
    SensorSpec,
    Switch,
    Task,
    TriggerSpec,
    Upstream,
    importable,
)
from .task_options import StepOptions
from .wiring import (
    CHUNKS,
    Call,
    HelperOp,
    Plan,
    Ref,
    RefList,
    Statement,
    StepWiring,
    WiringError,
    plan,
)


class CodegenError(Exception):
    """The IR describes a shape this version cannot compile (message names the step)."""


# `--executor` values served by an executor of a Dagster integration package:
# (module to import it from, executor definition)
ENGINE_EXECUTORS = {
    "celery": ("dagster_celery", "celery_executor"),
    "k8s": ("dagster_k8s", "k8s_job_executor"),
}
METAFLOW_EXECUTOR = importable(RUNTIME, "metaflow_executor")
MULTIPROCESS_EXECUTOR = importable(DAGSTER, "multiprocess_executor")
# `--executor` value -> the executor definition the job uses
EXECUTORS: dict[str, Import] = {
    "threads": METAFLOW_EXECUTOR,
    "multiprocess": MULTIPROCESS_EXECUTOR,
    "forkserver": MULTIPROCESS_EXECUTOR,
    "in_process": importable(DAGSTER, "in_process_executor"),
    **{name: importable(module, defn) for name, (module, defn) in ENGINE_EXECUTORS.items()},
}
IO_MANAGER = importable(RUNTIME, "metaflow_io_manager")
SHARED_IO_MANAGER = importable(RUNTIME, "metaflow_shared_io_manager")
FLOW_OUTPUT = "flow_run"  # the end op's output that is the flow's own asset
EVENT_ASSET_PREFIX = "metaflow_events"  # asset key of a published event: metaflow_events/<name>


def flow_asset_key(flow: str, project: str | None, branch: str | None) -> tuple[str, ...]:
    """The asset key of a flow's own asset (its artifacts' keys extend it)."""
    return (project, branch or "", flow) if project else (flow,)


# Config field type per parameter type (a JSON parameter travels as its text)
_ANNOTATIONS: dict[str, Literal["int", "float", "bool", "str"]] = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "str": "str",
    "json": "str",
}


class OpTranslator:
    """The attributes of every op: a step's (name, description, tags, retry policy, inputs,
    output, task options, runtime calls) and the fanout_*/regroup_* helpers'."""

    ir: FlowIR
    plan: Plan

    # -- step ops -------------------------------------------------------------------------------
    def get_op(self, step: StepIR) -> OpSpec:
        """The `@op` of one step, shaped by where the wiring placed it."""
        w = self.plan.steps[step.name]
        return OpSpec(
            name=self.get_op_name(step),
            dagster_name=self.get_definition_name(self.get_op_name(step)),
            inputs=self.get_inputs(w),
            output=self.get_output(step, w),
            body=self.get_body(step, w),
            tags=self.get_tags(step),
            description=self.get_description(step),
            retry_policy=self.get_retry_policy(step),
            config=self.get_config_input(w),
            after=w.input_form == "none" and bool(self.get_asset_deps()),
        )

    def get_asset_outputs(self) -> dict[str, str | None]:
        """The end op's outputs: `flow_run` (the flow's asset), `artifact_<name>` per artifact."""
        outs: dict[str, str | None] = {FLOW_OUTPUT: None}
        outs.update({f"artifact_{a}": a for a in self.ir.assets})
        return outs

    def get_asset_key(self) -> tuple[str, ...]:
        """The flow's asset key: `Flow`, or `project/branch/Flow` for a @project flow, so a
        downstream flow names it from its @trigger_on_finish alone."""
        auto = self.ir.automation
        return flow_asset_key(self.ir.flow_name, auto.project_name, auto.branch_name)

    def get_asset_deps(self) -> tuple[AssetDepSpec, ...]:
        """Assets the flow reads: each @trigger_on_finish flow's, each @trigger event's."""
        deps: dict[tuple[str, ...], None] = {}
        for t in self.ir.automation.triggers:
            if t.kind == "run" and t.flow:
                deps[flow_asset_key(t.flow.split(".")[-1], t.project, t.branch)] = None
            else:
                deps[(EVENT_ASSET_PREFIX, t.name)] = None
        taken: set[str] = set()
        return tuple(
            AssetDepSpec(
                naming.python_identifier("after_" + re.sub(r"\W", "_", key[-1]), taken), key
            )
            for key in deps
        )

    def get_config_input(self, w: StepWiring) -> str | None:
        """The start op takes the run's Config (the flow's parameters), if any."""
        return self.ir.config_class_name if w.input_form == "none" and self.ir.parameters else None

    def get_definition_name(self, op_name: str) -> str:
        """The op definition's name: Dagster wants it unique in a repository, which may hold
        several flows (a dg project); the node in the graph keeps `op_name`."""
        return f"{self.ir.job_name}__{op_name}"

    def get_op_name(self, step: StepIR) -> str:
        """`op_<step>` in Dagster's alphabet, chosen (unique) when the IR was built."""
        return step.op_name

    def get_description(self, step: StepIR) -> str | None:
        """The step's docstring, shown in the Dagster UI."""
        return step.doc or None

    def get_tags(self, step: StepIR) -> dict[str, str]:
        """Op tags: the step (and `end`, which the executor checks was reached), its
        resources and launcher, and the informational Dagster timeout."""
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
        return tags

    def get_retry_policy(self, step: StepIR) -> RetryPolicySpec | None:
        """Dagster retries the op, except a loop's: it retries each iteration itself."""
        if step.retry is None or step.is_recursive:
            return None
        return RetryPolicySpec(step.retry.max_retries, step.retry.delay_seconds or None)

    def get_step_options(self, step: StepIR, w: StepWiring) -> StepOptions:
        """The static task options the runtime receives as keyword arguments."""
        return StepOptions(
            max_user_code_retries=step.max_user_code_retries,
            extra_env=dict(step.env),
            # a launched task (remote, or in a @conda/@pypi environment) enforces @timeout
            # itself: its op's time also counts a pod's start or an environment's creation
            timeout=step.timeout_seconds if step.timeout_seconds and not step.launcher else None,
            launcher=step.launcher,
            ubf_context="ubf_control" if w.ubf_control else None,
            decorator_specs=step.decorator_specs,
        )

    def get_inputs(self, w: StepWiring) -> tuple[OpInput, ...]:
        """The op's inputs, from the input form the wiring chose."""
        forms: dict[str, tuple[OpInput, ...]] = {
            "none": (),
            "single": (OpInput(UPSTREAM, "str"),),
            "list": (OpInput(UPSTREAMS, "list"),),
            "lists": tuple(OpInput(n, "list") for n in w.input_names),
            "named": tuple(OpInput(n, "str") for n in w.input_names),
            "chunked": (OpInput(UPSTREAMS, "list"), OpInput(CHUNKS, "chunks")),
        }
        return forms[w.input_form]

    def get_upstream(self, w: StepWiring) -> Upstream:
        """The task's input paths, from the op's inputs."""
        if w.input_form in ("none", "single"):
            return Upstream("mapper_tasks" if w.parallel_join else "name", (UPSTREAM,))
        if w.input_form == "list":
            return Upstream("name", (UPSTREAMS,))
        if w.input_form == "chunked":
            return Upstream("chunked", (UPSTREAMS, CHUNKS))
        return Upstream("splat" if w.input_form == "lists" else "items", w.input_names)

    def get_output(self, step: StepIR, w: StepWiring) -> OpOutput:
        """A loop, a top-level foreach (dynamic), a switch (optional outputs), or a value."""
        if step.is_recursive:
            return OpOutput("loop", names=tuple(n for _t, n in w.switch_outputs))
        if w.dynamic_out:
            return OpOutput("chunked" if w.chunked else "dynamic")
        if w.switch_outputs:
            return OpOutput("switch", names=tuple(n for _t, n in w.switch_outputs))
        if step.kind == "end":
            return OpOutput("assets", names=tuple(self.get_asset_outputs()))
        return OpOutput("value")

    def get_task_id(self, step: StepIR, w: StepWiring) -> str | None:
        """A fixed task id, or None: from the mapping key inside a region."""
        return None if w.in_map else naming.task_id_for(step.name)

    def get_task(self, step: StepIR, w: StepWiring) -> Task:
        """The task the op runs (a foreach child reads its split index from the key)."""
        return Task(
            step=step.name,
            upstream=self.get_upstream(w),
            task_id=self.get_task_id(step, w),
            options=self.get_step_options(step, w),
            split_index=self.is_foreach_child(step) and not w.ubf_control,
        )

    def is_foreach_child(self, step: StepIR) -> bool:
        """A foreach's child: each task gets its split index."""
        return any(self.ir.step(p).kind == "foreach" for p in step.in_steps)

    def get_loop_retries(self, step: StepIR) -> tuple[int | None, int | None]:
        """A loop's (attempts per iteration, delay): it retries each iteration itself."""
        if step.retry is None:
            return None, None
        return step.retry.max_retries, step.retry.delay_seconds or None

    def get_body(self, step: StepIR, w: StepWiring) -> tuple[RuntimeCall, ...]:
        """The runtime calls of a step's op: init (start), the task (or loop), fan-out."""
        calls: list[RuntimeCall] = [RunId()]
        if w.input_form == "none":
            calls.append(InitRun(UPSTREAM, with_config=bool(self.ir.parameters)))
        task, outputs = self.get_task(step, w), dict(w.switch_outputs)
        if step.is_recursive:
            retries, delay = self.get_loop_retries(step)
            calls.append(RunLoop(task, outputs, retries, delay, always=w.switch_always))
        elif w.dynamic_out:
            calls += [RunStep(task, result="task"), FanOut(CHUNKS if w.chunked else None)]
        elif w.switch_outputs:
            calls += [RunStep(task, result="task"), Switch(outputs, always=w.switch_always)]
        elif step.kind == "end":
            calls += [RunStep(task, result="task"), Materialize(self.get_asset_outputs())]
        else:
            calls.append(RunStep(task, result="return"))
        return tuple(calls)

    # -- helper ops (nested foreach, chunks) -------------------------------------------------
    def get_chunk_op(self, step: StepIR, name: str) -> OpSpec:
        """A chunk_* op: a chunk of a foreach body step's tasks, each with its own attempts
        (so no Dagster retry policy, and @timeout applies per task, not to the op)."""
        w = self.plan.steps[step.name]
        task = Task(
            step=step.name,
            upstream=Upstream("name", (UPSTREAM,)),
            task_id=None,
            options=self.get_step_options(step, w),
            split_index=False,
        )
        tags = {k: v for k, v in self.get_tags(step).items() if not k.startswith("dagster/")}
        retries, delay = self.get_loop_retries(step)
        return OpSpec(
            name=name,
            dagster_name=self.get_definition_name(name),
            inputs=(OpInput(UPSTREAM, "chunk"),),
            output=OpOutput("chunk"),
            body=(RunId(), RunChunk(task, self.is_foreach_child(step), retries, delay)),
            tags={**tags, "metaflow/chunk": "true"},
            description=f"Tasks of step {step.name!r} in chunks, when its foreach is wider than "
            "the chunking threshold (one task after another, each with its own attempts).",
        )

    def get_helper_op(self, h: HelperOp) -> OpSpec:
        """A fanout_*/regroup_*/chunk_* op: Dagster plumbing for nested levels (no Metaflow
        task), or a chunk of a body step's tasks."""
        if h.kind == "chunk":
            return self.get_chunk_op(self.ir.step(h.step), h.name)
        if h.kind == "fanout":
            return OpSpec(
                name=h.name,
                dagster_name=self.get_definition_name(h.name),
                inputs=(OpInput(UPSTREAMS, "list"),),
                output=OpOutput("chunked" if h.chunked else "dynamic"),
                body=(FanOutAll(UPSTREAMS, CHUNKS if h.chunked else None),),
                tags={"metaflow/fanout": h.step},
                description=f"Fan out the children of every {h.step!r} task (nested foreach).",
            )
        lists = h.input_names[:-1] if h.chunked else h.input_names
        return OpSpec(
            name=h.name,
            dagster_name=self.get_definition_name(h.name),
            inputs=tuple(OpInput(n, "list") for n in lists)
            + ((OpInput(CHUNKS, "chunks"),) if h.chunked else ()),
            output=OpOutput("dynamic", item="list"),
            body=(Regroup(h.depth, lists, CHUNKS if h.chunked else None),),
            tags={"metaflow/regroup": h.step},
            description=f"Group the inputs of {h.step!r} per outer foreach index.",
        )


class Translator(OpTranslator):
    """Every attribute of the generated module: the ops (OpTranslator), the job, its
    executor and io manager, the Config class, the MetaflowFlow, the schedule and sensor."""

    def __init__(self, ir: FlowIR, reserved: frozenset[str]) -> None:
        """`reserved`: names the generated module binds itself (no variable may take them)."""
        self.ir = ir
        self.taken = set(reserved) | {s.op_name for s in ir.steps} | {ir.config_class_name}
        # `from my_flow_dagster import MyFlow` is the job, as it was before flows were assets
        self.job_fn = naming.python_identifier(ir.flow_name, self.taken)
        self.assets_fn = naming.python_identifier(graph_name(ir.flow_name), self.taken)
        try:
            self.plan: Plan = plan(ir, self.taken | {self.assets_fn, self.job_fn})
        except WiringError as exc:
            raise CodegenError(str(exc)) from None
        self.taken |= {h.name for h in self.plan.helpers}

    def definitions(self) -> DefinitionsSpec:
        """The whole module."""
        automation_taken = self.taken | {self.assets_fn, self.job_fn}  # schedule, sensor names
        return DefinitionsSpec(
            tags=self.ir.tags,
            flow=self.get_flow(),
            config=self.get_config(),
            ops=tuple(self.get_op(s) for s in self.ir.steps)
            + tuple(self.get_helper_op(h) for h in self.plan.helpers),
            assets=self.get_assets(),
            job=self.get_job(),
            body=self.get_graph_body(),
            schedule=self.get_schedule(automation_taken),
            sensor=self.get_sensor(automation_taken),
            notify_sensors=self.get_notify_sensors(automation_taken),
        )

    # -- assets and job -----------------------------------------------------------------------
    def get_assets(self) -> AssetsSpec:
        """The graph-backed multi-asset holding every op: the flow's asset and one per named
        artifact, in a group named after the deployment, owned by the deploying user."""
        ir, key = self.ir, self.get_asset_key()
        outs = [
            AssetOutSpec(
                FLOW_OUTPUT, key, ir.doc or f"Runs of the Metaflow flow {ir.flow_name}.", None
            )
        ]
        outs += [
            AssetOutSpec(out, (*key, art), f"Artifact `{art}` of {ir.flow_name}'s end step.", art)
            for out, art in self.get_asset_outputs().items()
            if art is not None
        ]
        return AssetsSpec(
            fn=self.assets_fn,
            name=graph_name(ir.job_name),
            group=ir.job_name,
            owners=(asset_owner(ir.owner),) if ir.owner else (),
            outs=tuple(outs),
            deps=self.get_asset_deps(),
            end_var=self.get_end_var(),
            automation_sensor=(
                naming.python_identifier(f"{self.job_fn}_automation", self.taken)
                if ir.asset_automation
                else None
            ),
            io_manager=self.get_io_manager(),
            event_prefix=EVENT_ASSET_PREFIX,
        )

    def get_end_var(self) -> str:
        """The variable the graph body binds the end op's handle to."""
        end_op = ir_end = self.ir.step(self.ir.end_step).op_name
        for s in self.plan.body:
            if isinstance(s, Call) and s.op == end_op:
                return s.targets[0]
        raise CodegenError(f"the end step {ir_end!r} is not at the top level of the job")

    def get_graph_body(self) -> tuple[Statement, ...]:
        """The wiring plan's statements; the start op also waits for the assets it reads."""
        deps = self.get_asset_deps()
        start_op = self.ir.step(self.ir.start_step).op_name
        if not deps:
            return self.plan.body
        refs = tuple(Ref(d.param) for d in deps)
        after = refs[0] if len(refs) == 1 else RefList(refs)
        return tuple(
            Call(s.targets, s.op, (*s.args, after))
            if isinstance(s, Call) and s.op == start_op
            else s
            for s in self.plan.body
        )

    def get_job(self) -> JobSpec:
        """The asset job that materializes the flow's assets: the flow's Dagster job."""
        return JobSpec(
            fn=self.job_fn,
            name=self.ir.job_name,
            description=self.get_job_description(),
            executor=self.get_executor(),
            tags=self.get_job_tags(),
        )

    def get_job_description(self) -> str | None:
        """The job's description in the UI: `--workflow-title` first, then
        `--workflow-description` or the flow's docstring (as Argo's defaults)."""
        body = (
            self.ir.workflow_description
            if self.ir.workflow_description is not None
            else self.ir.doc
        )
        parts = [p for p in (self.ir.workflow_title, body) if p]
        return "\n\n".join(parts) or None

    def get_job_tags(self) -> dict[str, str]:
        """Run tags: the flow, its @project branch, the workflow timeout (run monitoring),
        the priority (the QueuedRunCoordinator starts higher ones first) and title."""
        tags = {"metaflow/flow": self.ir.flow_name}
        auto = self.ir.automation
        if auto.project_name:
            tags["metaflow/project"] = auto.project_name
            tags["metaflow/branch"] = auto.branch_name or ""
        if self.ir.workflow_timeout:
            tags["dagster/max_runtime"] = str(self.ir.workflow_timeout)
        if self.ir.workflow_priority is not None:
            tags["dagster/priority"] = str(self.ir.workflow_priority)
        if self.ir.workflow_title:
            tags["metaflow/title"] = self.ir.workflow_title
        return tags

    def get_executor(self) -> ExecutorSpec:
        """The executor and its defaults (a launch may still override them in run config);
        Dagster's own executors know nothing of the Metaflow run's end: wrapped."""
        ir = self.ir
        definition = EXECUTORS.get(ir.executor)
        if definition is None:
            raise CodegenError(f"unknown executor {ir.executor!r}")
        config: dict[str, Any] = {"max_concurrent": ir.max_workers}
        if ir.executor == "threads" and ir.workflow_timeout:
            config["workflow_timeout"] = ir.workflow_timeout
        elif ir.executor == "forkserver":
            config["start_method"] = {"forkserver": {}}
        elif ir.executor == "in_process":
            config = {}
        elif ir.executor in ENGINE_EXECUTORS:
            config = dict(ir.executor_config)
        return ExecutorSpec(definition, config, run_end=definition != METAFLOW_EXECUTOR)

    def get_io_manager(self) -> Import:
        """Ops of a distributed executor share only the instance, not the worker's disk."""
        return SHARED_IO_MANAGER if self.ir.executor in ENGINE_EXECUTORS else IO_MANAGER

    # -- module-level records -----------------------------------------------------------------
    def get_config(self) -> ConfigSpec | None:
        """The run's Config class, when the flow has parameters."""
        if not self.ir.parameters:
            return None
        return ConfigSpec(self.ir.config_class_name, self.get_config_fields())

    def get_config_fields(self) -> tuple[ConfigField, ...]:
        """One typed field per parameter; the alias keeps the Metaflow name reachable."""
        return tuple(
            ConfigField(
                name=p.field_name,
                type=_ANNOTATIONS[p.type],
                optional=not p.required and not p.has_default,
                required=p.required,
                default=p.default,
                alias=p.name if p.field_name != p.name else None,
                description=p.help or None,
            )
            for p in self.ir.parameters
        )

    def get_notifications(self) -> tuple[tuple[str, Any], ...] | None:
        """`Notifications(...)`'s keyword arguments: those that differ from the defaults."""
        n = self.ir.notifications
        if n is None:
            return None
        default = Notifications()
        return tuple(
            (f.name, dict(value) if isinstance(value, Mapping) else value)
            for f in fields(n)
            if (value := getattr(n, f.name)) != getattr(default, f.name)
        )

    def get_notify_sensors(self, taken: set[str]) -> tuple[NotifySensorSpec, ...]:
        """One run-status sensor per outcome announced: under the daemon they announce the
        runs whose worker could not (it died, or never started)."""
        n, ir = self.ir.notifications, self.ir
        if n is None:
            return ()
        services = ", ".join(SERVICE_NAMES[s] for s in n.services)
        return tuple(
            NotifySensorSpec(
                fn=naming.python_identifier(f"{self.job_fn}_notify_on_{outcome}", taken),
                name=notify_sensor_name(ir.job_name, outcome),
                job_fn=self.job_fn,
                successful=outcome == "success",
                description=f"Tells {services} of {'successful' if outcome == 'success' else 'failed'}"
                f" runs of {ir.job_name} (once a run)",
            )
            for outcome in n.outcomes
        )

    def get_flow(self) -> FlowSpec:
        """What every op's runtime needs to know about the flow and the deployment."""
        ir = self.ir
        hooks = ir.automation.exit_hooks
        return FlowSpec(
            name=ir.flow_name,
            file=ir.flow_file,
            top_level_args=tuple(ir.top_level_args),
            environment=dict(ir.environment),
            namespace=ir.namespace,
            owner=ir.owner,
            production_token=ir.production_token,
            config_values=ir.config_values or None,
            flow_fingerprint=ir.flow_fingerprint or None,
            switch_steps=tuple(s.name for s in ir.steps if s.kind == "switch"),
            card_steps=tuple(s.name for s in ir.steps if s.has_card),
            job_name=ir.job_name,
            exit_hooks_on_success=hooks.on_success if hooks is not None else (),
            exit_hooks_on_error=hooks.on_error if hooks is not None else (),
            datastore=ir.datastore_kwargs,
            parameters=tuple((p.field_name, p.env_var, p.type) for p in ir.parameters),
            transitions=tuple((s.name, s.next_steps) for s in ir.steps),
            notifications=self.get_notifications(),
            auto_emit_events=ir.auto_emit_events,
        )

    def get_schedule(self, taken: set[str]) -> ScheduleSpec | None:
        """@schedule as a ScheduleDefinition (its variable recorded in `taken`)."""
        sched, ir = self.ir.automation.schedule, self.ir
        if sched is None:
            return None
        return ScheduleSpec(
            var=naming.python_identifier(f"{self.job_fn}_schedule", taken),
            name=ir.job_name + "_schedule",
            job_fn=self.job_fn,
            cron=sched.cron,
            timezone=sched.timezone or None,
            tags={"dagster-metaflow/deployment": ir.job_name},
            description=f"@schedule of {ir.flow_name}: {sched.metaflow_cron}",
        )

    def get_triggers(self) -> tuple[TriggerSpec, ...]:
        """The events (or upstream runs) of @trigger/@trigger_on_finish, typed parameters."""
        types = {p.name: p.type for p in self.ir.parameters}
        return tuple(
            TriggerSpec(
                name=t.name,
                kind=t.kind,
                flow=t.flow,
                project=t.project or None,
                branch=t.branch,
                parameters=tuple((p, k, types[p], required) for p, k, required in t.parameters),
            )
            for t in self.ir.automation.triggers
            # with asset automation, an upstream flow's end starts this one through its asset
            if not (t.kind == "run" and self.ir.asset_automation)
        )

    def get_sensor(self, taken: set[str]) -> SensorSpec | None:
        """@trigger/@trigger_on_finish as a sensor that evaluates the triggers."""
        ir, triggers = self.ir, self.get_triggers()
        if not triggers:
            return None
        suffix = "_trigger_on_finish" if triggers[0].kind == "run" else "_trigger"
        what = " and ".join(t.name for t in triggers)
        return SensorSpec(
            fn=naming.python_identifier(f"{self.job_fn}{suffix}", taken),
            name=ir.job_name + suffix,
            job_fn=self.job_fn,
            job_name=ir.job_name,
            description=f"Starts {ir.job_name} when {what} occurred",
            triggers=triggers,
            start_op=f"{graph_name(ir.job_name)}.{ir.step(ir.start_step).op_name}",
        )


def graph_name(job_name: str) -> str:
    """The name of the flow's graph-backed asset (a Dagster node name: unique in the
    repository, so not the job's, which the asset job's own graph takes)."""
    return f"{job_name}_steps"


def asset_owner(user: str) -> str:
    """Dagster accepts an email or `team:<name>` as an asset owner: a bare Metaflow user
    name becomes `team:<user>`."""
    if re.fullmatch(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,7}", user):
        return user
    return "team:" + (re.sub(r"[^A-Za-z0-9_.-]", "_", user) or "unknown")
