"""What the generated definitions file holds, as frozen records: ops, job, schedule, sensor.

The translator (translator.py) fills them from the IR and the wiring plan; the Jinja
templates write every line of Python from them. Each record says which names it imports
(`imports()`), so the import lists of the generated module follow from what it uses, and
`importable_names()` knows every name any record may import before a flow is compiled.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from .task_options import StepOptions
from .wiring import CHUNKS, UPSTREAM, UPSTREAMS, Statement

DAGSTER = "dagster"
RUNTIME = "dagster_metaflow.runtime"


@dataclass(frozen=True)
class Import:
    """`from module import name`."""

    module: str
    name: str


_IMPORTABLE: list[Import] = []


def importable(module: str, name: str) -> Import:
    """An import some record may need, registered so that generated variables never
    shadow it (whether or not a given flow imports it)."""
    imp = Import(module, name)
    _IMPORTABLE.append(imp)
    return imp


def importable_names() -> frozenset[str]:
    """Every name the generated module may import."""
    return frozenset(i.name for i in _IMPORTABLE)


OP = importable(DAGSTER, "op")
OP_CONTEXT = importable(DAGSTER, "OpExecutionContext")
DYNAMIC_OUT = importable(DAGSTER, "DynamicOut")
OUT = importable(DAGSTER, "Out")
RETRY_POLICY = importable(DAGSTER, "RetryPolicy")
JOB = importable(DAGSTER, "job")
GRAPH_MULTI_ASSET = importable(DAGSTER, "graph_multi_asset")
ASSET_OUT = importable(DAGSTER, "AssetOut")
ASSET_IN = importable(DAGSTER, "AssetIn")
IN = importable(DAGSTER, "In")
NOTHING = importable(DAGSTER, "Nothing")
DEFINE_ASSET_JOB = importable(DAGSTER, "define_asset_job")
AUTOMATION_CONDITION = importable(DAGSTER, "AutomationCondition")
AUTOMATION_SENSOR = importable(DAGSTER, "AutomationConditionSensorDefinition")
ASSET_SELECTION = importable(DAGSTER, "AssetSelection")
DEFINITIONS = importable(DAGSTER, "Definitions")
CONFIG = importable(DAGSTER, "Config")
FIELD = importable("pydantic", "Field")
SCHEDULE_DEFINITION = importable(DAGSTER, "ScheduleDefinition")
DEFAULT_SCHEDULE_STATUS = importable(DAGSTER, "DefaultScheduleStatus")
SENSOR = importable(DAGSTER, "sensor")
SENSOR_CONTEXT = importable(DAGSTER, "SensorEvaluationContext")
DEFAULT_SENSOR_STATUS = importable(DAGSTER, "DefaultSensorStatus")
TRIGGER = importable(RUNTIME, "Trigger")
EVALUATE_TRIGGERS = importable(RUNTIME, "evaluate_triggers")
METAFLOW_FLOW = importable(RUNTIME, "MetaflowFlow")
PATH = importable("pathlib", "Path")
EXECUTOR_WITH_DEFAULTS = importable(RUNTIME, "executor_with_defaults")
WITH_RUN_END = importable(RUNTIME, "with_metaflow_run_end")
RUN_FAILURE_SENSOR = importable(DAGSTER, "run_failure_sensor")
RUN_FAILURE_CONTEXT = importable(DAGSTER, "RunFailureSensorContext")
RUN_STATUS_SENSOR = importable(DAGSTER, "run_status_sensor")
RUN_STATUS_CONTEXT = importable(DAGSTER, "RunStatusSensorContext")
RUN_STATUS = importable(DAGSTER, "DagsterRunStatus")
NOTIFICATIONS = importable(RUNTIME, "Notifications")
NOTIFY_FROM_SENSOR = importable(RUNTIME, "notify_from_sensor")

# the inputs an op gets from one predecessor / from a fan-in list of them / from chunk ops
OP_INPUT_NAMES = frozenset({UPSTREAM, UPSTREAMS, CHUNKS})


# -- ops ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpInput:
    """One input of an op: a task pathspec (`str`), a list of them, or a chunk of foreach
    tasks (`chunk`: `[index, pathspec]` pairs; a list of chunks for a join: `chunks`)."""

    name: str
    kind: Literal["str", "list", "chunk", "chunks"]


@dataclass(frozen=True)
class OpOutput:
    """What an op produces: one pathspec (returned), a dynamic output (`item` per mapping
    key; `chunked`: with a second one of chunks), optional outputs `names` yielded by a
    switch or a loop, or a chunk op's `[index, pathspec]` pairs (`chunk`)."""

    kind: Literal["value", "dynamic", "chunked", "switch", "loop", "assets", "chunk"]
    item: Literal["str", "list"] = "str"
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetryPolicySpec:
    """Dagster's RetryPolicy (delay None: retry at once)."""

    max_retries: int
    delay: int | None = None


@dataclass(frozen=True)
class Upstream:
    """How an op's inputs become the task's input paths: one input as is (`name`), the
    mapper tasks of a @parallel control task, a list of inputs, lists spliced into one, or a
    foreach join's per-task list and its chunks' tasks."""

    kind: Literal["name", "mapper_tasks", "items", "splat", "chunked"]
    names: tuple[str, ...]


@dataclass(frozen=True)
class RunId:
    """`run_id = _run_id(context)`: the Metaflow run comes from the Dagster run, never from
    an input (a re-execution reuses inputs of its parent run but writes a new Metaflow run)."""

    kind: ClassVar[str] = "run_id"


@dataclass(frozen=True)
class InitRun:
    """The start op first runs `init` (parameters) and binds the result to `target`."""

    kind: ClassVar[str] = "init_run"
    target: str
    with_config: bool  # pass the op's Config (the flow has parameters)


@dataclass(frozen=True)
class Task:
    """The Metaflow task an op runs: its step, input paths, id and static options."""

    step: str
    upstream: Upstream
    task_id: str | None  # None: from the mapping key (inside a region)
    options: StepOptions
    split_index: bool  # a foreach child: its index comes from the mapping key


@dataclass(frozen=True)
class RunStep:
    """`_run_step(...)`: one Metaflow task; returned, or kept in `task` for a follow-up."""

    kind: ClassVar[str] = "run_step"
    task: Task
    result: Literal["return", "task"]


@dataclass(frozen=True)
class FanOut:
    """`yield from _fan_out(context, task)`: a top-level foreach's dynamic output; with
    `chunks` (the second output's name) in chunks when it is wider than the threshold."""

    kind: ClassVar[str] = "fan_out"
    chunks: str | None = None


@dataclass(frozen=True)
class RunChunk:
    """`return _run_chunk(...)`: the tasks of one chunk of a foreach body step, one after
    another, each with its own attempts (`max_retries`, `retry_delay`: @retry and @catch)."""

    kind: ClassVar[str] = "run_chunk"
    task: Task  # the step's options; task id and split index come from each chunk item
    foreach_child: bool  # the first body step: each task gets its split index
    max_retries: int | None
    retry_delay: int | None


@dataclass(frozen=True)
class Switch:
    """`yield from _switch(...)`: the chosen branch's output (every one when `always`)."""

    kind: ClassVar[str] = "switch"
    outputs: Mapping[str, str]  # target step -> output name
    always: bool


@dataclass(frozen=True)
class RunLoop:
    """`yield from _run_loop(...)`: a recursive step, one task per iteration, each
    retried by the loop itself."""

    kind: ClassVar[str] = "run_loop"
    task: Task
    outputs: Mapping[str, str]
    max_retries: int | None
    retry_delay: int | None
    always: bool


@dataclass(frozen=True)
class FanOutAll:
    """`yield from _fan_out_all(...)`: a nested foreach fans out over every index pair; with
    `chunks` (the second output's name) in chunks when it is wider than the threshold."""

    kind: ClassVar[str] = "fan_out_all"
    upstreams: str
    chunks: str | None = None


@dataclass(frozen=True)
class Regroup:
    """`yield from _regroup(...)`: inputs grouped per outer index (`depth` key parts), with
    the tasks of the chunks collected in input `chunks` (a chunked body's join)."""

    kind: ClassVar[str] = "regroup"
    depth: int
    inputs: tuple[str, ...]
    chunks: str | None = None


@dataclass(frozen=True)
class Materialize:
    """`yield from _materialize(...)`: the end op's asset outputs (output name -> artifact,
    None for the flow's own asset), with the run's and the artifacts' metadata."""

    kind: ClassVar[str] = "materialize"
    outputs: Mapping[str, str | None]


RuntimeCall = (
    RunId
    | InitRun
    | RunStep
    | FanOut
    | Switch
    | RunLoop
    | FanOutAll
    | Regroup
    | Materialize
    | RunChunk
)


@dataclass(frozen=True)
class OpSpec:
    """One `@op`: decorator arguments, signature and the runtime calls of its body."""

    name: str
    inputs: tuple[OpInput, ...]
    output: OpOutput
    body: tuple[RuntimeCall, ...]
    tags: Mapping[str, str]
    description: str | None = None
    retry_policy: RetryPolicySpec | None = None
    config: str | None = None  # the Config class the op takes (start op of a flow with parameters)
    # the definition's name, unique in a repository holding several flows (the node keeps
    # `name`: the graph calls `op_x.alias("op_x")`); None: `name`
    dagster_name: str | None = None
    after: bool = False  # a Nothing input: the start op waits for the assets the flow reads

    def imports(self) -> tuple[Import, ...]:
        out = [OP, OP_CONTEXT]
        if self.output.kind in ("dynamic", "chunked"):
            out.append(DYNAMIC_OUT)
        if self.output.kind in ("switch", "loop", "assets"):
            out.append(OUT)
        if self.after:
            out += [IN, NOTHING]
        if self.retry_policy is not None:
            out.append(RETRY_POLICY)
        return tuple(out)

    def makes(self, *kinds: str) -> bool:
        """Whether the body makes one of these runtime calls."""
        return any(c.kind in kinds for c in self.body)

    @property
    def reads_mapper_tasks(self) -> bool:
        """Whether its task reads the mapper tasks of a @parallel control task."""
        return any(
            isinstance(c, RunStep | RunLoop) and c.task.upstream.kind == "mapper_tasks"
            for c in self.body
        )


# -- job, config, automation, the module ---------------------------------------------------------


@dataclass(frozen=True)
class ExecutorSpec:
    """The job's executor: its definition, baked config defaults, and whether it must be
    wrapped to learn the Metaflow run's end (@exit_hook, reaching `end`)."""

    definition: Import
    config: Mapping[str, Any]
    run_end: bool

    def imports(self) -> tuple[Import, ...]:
        return (
            self.definition,
            *([EXECUTOR_WITH_DEFAULTS] if self.config else []),
            *([WITH_RUN_END] if self.run_end else []),
        )


@dataclass(frozen=True)
class AssetOutSpec:
    """One asset the flow declares: the flow's own (`artifact` None) or one of its end
    step's artifacts, produced by the end op's output `out`."""

    out: str
    key: tuple[str, ...]
    description: str
    artifact: str | None


@dataclass(frozen=True)
class AssetDepSpec:
    """An asset the flow reads (an upstream flow's, or a published event's): a graph input
    `param` the start op waits for, loading nothing."""

    param: str
    key: tuple[str, ...]


@dataclass(frozen=True)
class AssetsSpec:
    """`@graph_multi_asset`: the flow's ops as one graph whose outputs are its assets, so
    that "Materialize" runs the flow, one op per step."""

    fn: str
    name: str
    group: str
    owners: tuple[str, ...]
    outs: tuple[AssetOutSpec, ...]
    deps: tuple[AssetDepSpec, ...]
    end_var: str  # the end op's handle in the graph body
    # with asset automation: the AutomationConditionSensorDefinition's variable (None: off)
    automation_sensor: str | None
    io_manager: Import
    event_prefix: str  # event assets' key prefix: automation ignores them (@trigger's sensor)

    @property
    def automation(self) -> bool:
        """AutomationCondition on each asset (instead of @trigger_on_finish's sensor)."""
        return self.automation_sensor is not None

    def imports(self) -> tuple[Import, ...]:
        return (
            GRAPH_MULTI_ASSET,
            ASSET_OUT,
            *([ASSET_IN, NOTHING] if self.deps else []),
            *(
                [AUTOMATION_CONDITION, AUTOMATION_SENSOR, ASSET_SELECTION, DEFAULT_SENSOR_STATUS]
                if self.automation
                else []
            ),
            self.io_manager,
        )


@dataclass(frozen=True)
class JobSpec:
    """`define_asset_job`: the variable, Dagster name, executor and run tags of the job that
    materializes the flow's assets."""

    fn: str
    name: str
    description: str | None
    executor: ExecutorSpec
    tags: Mapping[str, str]

    def imports(self) -> tuple[Import, ...]:
        return (DEFINE_ASSET_JOB, DEFINITIONS, *self.executor.imports())


@dataclass(frozen=True)
class ConfigField:
    """One field of the run's Config class (a flow parameter)."""

    name: str
    type: Literal["int", "float", "bool", "str"]
    optional: bool  # `| None`: neither required nor defaulted
    required: bool
    default: Any
    alias: str | None  # the Metaflow parameter name, when the field name differs
    description: str | None

    @property
    def uses_field(self) -> bool:
        """Whether it needs pydantic's Field(...) rather than a plain default."""
        return self.alias is not None or self.description is not None


@dataclass(frozen=True)
class ConfigSpec:
    """The Config class of the flow's parameters."""

    class_name: str
    fields: tuple[ConfigField, ...]

    def imports(self) -> tuple[Import, ...]:
        return (CONFIG, *([FIELD] if any(f.uses_field for f in self.fields) else []))


@dataclass(frozen=True)
class FlowSpec:
    """The arguments of the module's `MetaflowFlow(...)` (what every op's runtime reads)."""

    name: str
    file: str
    top_level_args: tuple[str, ...]
    environment: Mapping[str, str]
    namespace: str | None
    owner: str | None
    production_token: str | None
    config_values: str | None
    flow_fingerprint: str | None
    switch_steps: tuple[str, ...]
    card_steps: tuple[str, ...]
    job_name: str | None  # with exit hooks only
    exit_hooks_on_success: tuple[str, ...]
    exit_hooks_on_error: tuple[str, ...]
    datastore: tuple[tuple[str, str | None], ...]  # (keyword, value)
    parameters: tuple[tuple[str, str, str], ...]  # (field, env var, type)
    transitions: tuple[tuple[str, tuple[str, ...]], ...]  # every step's allowed next steps
    # `Notifications(...)` keyword arguments (the non-default ones); None: no notifications
    notifications: tuple[tuple[str, Any], ...] | None = None
    auto_emit_events: bool = True

    def imports(self) -> tuple[Import, ...]:
        return (PATH, METAFLOW_FLOW, *([NOTIFICATIONS] if self.notifications is not None else []))


@dataclass(frozen=True)
class ScheduleSpec:
    """A ScheduleDefinition (@schedule)."""

    var: str
    name: str
    job_fn: str
    cron: str
    timezone: str | None
    tags: Mapping[str, str]
    description: str

    def imports(self) -> tuple[Import, ...]:
        return (SCHEDULE_DEFINITION, DEFAULT_SCHEDULE_STATUS)


@dataclass(frozen=True)
class TriggerSpec:
    """One `Trigger(...)` the sensor evaluates (an event, or an upstream run's end)."""

    name: str
    kind: Literal["event", "run"]
    flow: str | None
    project: str | None
    branch: str | None
    parameters: tuple[tuple[str, str, str, bool], ...]  # (parameter, field, type, required)


@dataclass(frozen=True)
class SensorSpec:
    """The sensor of @trigger / @trigger_on_finish."""

    fn: str
    name: str
    job_fn: str
    job_name: str
    description: str
    triggers: tuple[TriggerSpec, ...]
    start_op: str

    def imports(self) -> tuple[Import, ...]:
        return (SENSOR, SENSOR_CONTEXT, DEFAULT_SENSOR_STATUS, TRIGGER, EVALUATE_TRIGGERS)


@dataclass(frozen=True)
class NotifySensorSpec:
    """A run-status sensor announcing the runs nobody else announced (create --notify-*)."""

    fn: str
    name: str
    job_fn: str
    successful: bool  # SUCCESS runs (run_status_sensor), else FAILURE (run_failure_sensor)
    description: str

    def imports(self) -> tuple[Import, ...]:
        names: tuple[Import, ...]
        if self.successful:
            names = (RUN_STATUS_SENSOR, RUN_STATUS_CONTEXT, RUN_STATUS)
        else:
            names = (RUN_FAILURE_SENSOR, RUN_FAILURE_CONTEXT)
        return (*names, DEFAULT_SENSOR_STATUS, NOTIFY_FROM_SENSOR)


class _Importing(Protocol):
    def imports(self) -> tuple[Import, ...]: ...


@dataclass(frozen=True)
class ImportBlock:
    """One import statement of the generated module."""

    module: str
    names: tuple[str, ...]
    parenthesized: bool  # one name a line (the long dagster list)


@dataclass(frozen=True)
class DefinitionsSpec:
    """The whole generated module."""

    tags: tuple[str, ...]
    flow: FlowSpec
    config: ConfigSpec | None
    ops: tuple[OpSpec, ...]
    assets: AssetsSpec
    job: JobSpec
    body: tuple[Statement, ...]  # the graph function's statements (wiring plan)
    schedule: ScheduleSpec | None
    sensor: SensorSpec | None
    notify_sensors: tuple[NotifySensorSpec, ...] = ()

    @property
    def sensor_vars(self) -> tuple[str, ...]:
        """Every sensor the Definitions list."""
        own = (self.sensor.fn,) if self.sensor is not None else ()
        auto = (self.assets.automation_sensor,) if self.assets.automation_sensor else ()
        return (*own, *auto, *(s.fn for s in self.notify_sensors))

    # which groups of `FLOW` method aliases the module defines (a group per feature)
    @property
    def uses_nesting(self) -> bool:
        """fanout_*/regroup_* helpers: `_fan_out_all`, `_regroup`."""
        return any(o.makes("fan_out_all", "regroup") for o in self.ops)

    @property
    def uses_chunks(self) -> bool:
        """A chunked foreach: `_run_chunk`, `_chunk_tasks`."""
        return any(o.makes("run_chunk") for o in self.ops)

    @property
    def uses_switch(self) -> bool:
        """A switch or a loop: `_switch`, `_run_loop`."""
        return any(o.output.kind in ("switch", "loop") for o in self.ops)

    @property
    def uses_parallel(self) -> bool:
        """A @parallel join: `_mapper_tasks`."""
        return any(o.reads_mapper_tasks for o in self.ops)

    @property
    def imports(self) -> tuple[ImportBlock, ...]:
        """Import statements for every name the records use, grouped as isort does."""
        parts: list[_Importing | None] = [
            self.flow,
            *self.ops,
            self.assets,
            self.job,
            self.config,
            self.schedule,
            self.sensor,
            *self.notify_sensors,
        ]
        return import_blocks(i for p in parts if p is not None for i in p.imports())


def import_blocks(imports: Iterable[Import]) -> tuple[ImportBlock, ...]:
    """Group imports per module: standard library, third party, then this package."""
    by_module: dict[str, set[str]] = {}
    for imp in imports:
        by_module.setdefault(imp.module, set()).add(imp.name)
    own = __name__.split(".")[0]

    def section(module: str) -> tuple[int, str]:
        top = module.split(".")[0]
        return (0 if top in sys.stdlib_module_names else 2 if top == own else 1, module)

    return tuple(
        ImportBlock(
            module,
            tuple(sorted(by_module[module], key=lambda n: (n[0].islower(), n.lower()))),
            parenthesized=module == DAGSTER,
        )
        for module in sorted(by_module, key=section)
    )
