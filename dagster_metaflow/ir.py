"""Typed intermediate representation of a Metaflow flow, and its builder.

Everything Metaflow-specific is read here, once, into frozen dataclasses. Code generation
reads only these records, so it can be tested with hand-built IRs and never touches
Metaflow objects. The IR describes every shape Metaflow allows (nested foreach, switch,
recursion, @parallel) even where codegen does not compile it yet.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Literal, cast

from . import naming
from .automation import AutomationError, AutomationIR, build_automation
from .notifications import Notifications
from .step_decorators import (
    INTERNAL_DECORATORS,
    LAUNCHER_DECORATORS,
    REFUSED_STEP_DECORATORS,
    REMOTE_COMPUTE_DECORATORS,
    REMOTE_DATASTORES,
    RUNTIME_HOOKS,
    SUPPORTED_STEP_DECORATORS,
    Launcher,
)

StepKind = Literal["start", "linear", "split", "foreach", "join", "switch", "end"]
JoinKind = Literal["static", "foreach"]
ParamType = Literal["int", "float", "bool", "str", "json"]


def remote_datastore_refusal(decorator: str, where: str) -> str:
    """The one line `create` prints when a remote-compute decorator meets a datastore its
    remote task cannot read (`where`: "on step 'train'" or "given with --with")."""
    allowed = REMOTE_DATASTORES.get(decorator, ("s3",))
    return (
        f"@{decorator} {where} needs a remote datastore (--datastore={'/'.join(allowed)}): "
        f"a remote task cannot read the local one"
    )


class IRError(Exception):
    """A flow that cannot be compiled; the message names the step/decorator/parameter."""


@dataclass(frozen=True)
class RetrySpec:
    """Dagster RetryPolicy inputs derived from @retry/@catch."""

    max_retries: int
    delay_seconds: int | None  # None: retry immediately (no `delay=` argument)


@dataclass(frozen=True)
class StepIR:
    """One Metaflow step and everything the generated op needs to know about it."""

    name: str
    op_name: str
    kind: StepKind
    next_steps: tuple[str, ...]
    in_steps: tuple[str, ...]
    foreach_depth: int  # enclosing foreach levels (length of the foreach stack in the task)
    split_parents: tuple[str, ...]
    matching_join: str | None = None
    join_kind: JoinKind | None = None
    switch_cases: tuple[tuple[str, str], ...] = ()
    condition: str | None = None
    is_parallel: bool = False  # @parallel step (UBF control + workers)
    parallel_foreach: bool = False  # self.next(..., num_parallel=N)
    num_parallel: int = 0
    retry: RetrySpec | None = None
    max_user_code_retries: int = 0
    timeout_seconds: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    resources: tuple[tuple[str, str], ...] = ()
    decorator_specs: tuple[str, ...] = ()  # dynamic (`--with`) decorators to forward
    has_card: bool = False  # @card: the op links the task's cards
    # the decorator whose Metaflow runtime hooks launch the task (remote compute first):
    # the op launches it as Metaflow's runtime does, see runtime/native.py
    launcher: Launcher | None = None
    doc: str = ""

    @property
    def remote(self) -> str | None:
        """The remote compute the task runs on (@kubernetes, @batch), if any."""
        return self.launcher if self.launcher in REMOTE_COMPUTE_DECORATORS else None

    @property
    def is_recursive(self) -> bool:
        """A switch step that can route back to itself."""
        return self.kind == "switch" and self.name in self.next_steps


@dataclass(frozen=True)
class ParameterIR:
    """A flow Parameter as a typed Dagster Config field."""

    name: str  # Metaflow parameter name (may contain '-')
    field_name: str  # Python identifier used in the generated Config class
    type: ParamType
    required: bool
    has_default: bool
    default: Any = None  # JSON-compatible value (for "json": the JSON text)
    help: str | None = None

    @property
    def env_var(self) -> str:
        """Environment variable `flow.py init` reads this parameter from."""
        return "METAFLOW_INIT_" + self.name.upper().replace("-", "_")


@dataclass(frozen=True, kw_only=True)
class IROptions:
    """User options of `dagster create` (and facts of its environment) that shape the file."""

    job_name: str
    flow_file: str  # as written into the generated file (relative to it when possible)
    tags: tuple[str, ...] = ()
    namespace: str | None = None
    max_workers: int = 16
    workflow_timeout: int | None = None
    workflow_priority: int | None = None  # `dagster/priority` of every run (queued runs)
    workflow_title: str | None = None
    workflow_description: str | None = None  # None: the flow's docstring
    top_level_args: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()  # baked, allow-listed METAFLOW_* config
    regenerate_command: str = ""
    tool_version: str = ""
    output_name: str = "<this file>"
    datastore_type: str = "local"
    datastore_root: str | None = None
    executor: str = "threads"
    # defaults of the executor's own config fields (`--executor-config`), e.g. Celery's broker
    executor_config: Mapping[str, Any] = field(default_factory=dict)
    owner: str | None = None  # deploying user (runs' `user:`, steps' METAFLOW_USER)
    # Metaflow's dump of the flow's resolved configs ({"user_configs": {name: [value, plain]}}),
    # JSON text: fixed at create, read by every step through --local-config-file
    config_values: str | None = None
    # sha256 of the compiled flow file: a run uses the deployment's code package when the
    # deployment record matches it, and otherwise refuses a flow file that changed
    flow_fingerprint: str | None = None
    assets: tuple[str, ...] = ()  # end-step artifacts declared as assets (besides the flow's)
    asset_automation: bool = False  # AutomationCondition instead of @trigger_on_finish's sensor
    production_token: str | None = None  # steps run in namespace production:<token>
    notifications: Notifications | None = None  # run-end messages (--notify-*)
    auto_emit_events: bool = True  # publish metaflow.<Flow>.end on success (--auto-emit-events)


@dataclass(frozen=True, kw_only=True)
class FlowIR(IROptions):
    """A whole flow: the compile options plus everything read from the Metaflow graph."""

    flow_name: str
    start_step: str
    end_step: str
    steps: tuple[StepIR, ...]  # topological order
    parameters: tuple[ParameterIR, ...] = ()
    doc: str = ""
    config_class_name: str = "FlowParameters"
    automation: AutomationIR = AutomationIR()  # @schedule, @trigger*, @exit_hook

    @property
    def datastore_kwargs(self) -> tuple[tuple[str, str | None], ...]:
        return (("datastore_type", self.datastore_type), ("datastore_root", self.datastore_root))

    @cached_property
    def by_name(self) -> Mapping[str, StepIR]:
        return {s.name: s for s in self.steps}

    def step(self, name: str) -> StepIR:
        return self.by_name[name]


# ---------------------------------------------------------------------------------------
# Builder: Metaflow graph + decorators -> FlowIR
# ---------------------------------------------------------------------------------------


def _step_kind(node: Any, graph: Any) -> StepKind:
    if node.name == graph.start_step and node.type != "end":
        # the start step may itself split; its kind is what it does, start is implied
        if node.type in ("foreach", "split", "split-switch"):
            return _TYPE_TO_KIND[node.type]
        return "start"
    return _TYPE_TO_KIND[node.type]


_TYPE_TO_KIND: dict[str, StepKind] = {
    "start": "start",
    "linear": "linear",
    "split": "split",
    "foreach": "foreach",
    "join": "join",
    "split-switch": "switch",
    "end": "end",
}


def _foreach_depth(node: Any, graph: Any) -> int:
    """Number of foreach levels enclosing the tasks of `node`."""
    depth = sum(1 for p in node.split_parents if graph[p].type == "foreach")
    # Metaflow keeps the foreach in split_parents of its own join; the join's tasks have
    # already left that level.
    if (
        node.type == "join"
        and node.split_parents
        and graph[node.split_parents[-1]].type == "foreach"
    ):
        depth -= 1
    return depth


def _retry_spec(step: str, decos: Iterable[Any]) -> tuple[RetrySpec | None, int]:
    """RetryPolicy and --max-user-code-retries exactly as Metaflow's schedulers compute them."""
    user_retries = 0
    error_retries = 0
    delay: int | None = None
    for deco in decos:
        u, e = deco.step_task_retry_count()
        user_retries = max(user_retries, int(u or 0))
        error_retries = max(error_retries, int(e or 0))
        if deco.name == "retry":
            user_set: set[str] = getattr(deco, "_user_defined_attributes", set())
            minutes = deco.attributes.get("minutes_between_retries")
            if "minutes_between_retries" in user_set and minutes:
                try:
                    delay = int(float(minutes) * 60)
                except (TypeError, ValueError) as exc:
                    raise IRError(
                        f"step {step!r}: @retry(minutes_between_retries={minutes!r}) is not a number"
                    ) from exc
    total = user_retries + error_retries
    if total <= 0:
        return None, user_retries
    return RetrySpec(max_retries=total, delay_seconds=delay or None), user_retries


def _stringify_mapping(
    step: str, deco: str, values: Mapping[str, Any]
) -> tuple[tuple[str, str], ...]:
    out = []
    for k, v in sorted(values.items()):
        if v is None:
            continue
        if not isinstance(k, str):
            raise IRError(f"step {step!r}: @{deco} key {k!r} is not a string")
        out.append(
            (
                k,
                v
                if isinstance(v, str)
                else json.dumps(v)
                if isinstance(v, (dict, list))
                else str(v),
            )
        )
    return tuple(out)


def _timeout_seconds(step: str, attrs: Mapping[str, Any]) -> int | None:
    """@timeout's units summed, as Metaflow's TimeoutDecorator does."""
    try:
        secs = (
            int(attrs.get("hours") or 0) * 3600
            + int(attrs.get("minutes") or 0) * 60
            + int(attrs.get("seconds") or 0)
        )
    except (TypeError, ValueError) as exc:
        raise IRError(
            f"step {step!r}: @timeout values must be whole numbers: {dict(attrs)}"
        ) from exc
    return secs or None


def runtime_hooks_of(deco: Any) -> list[str]:
    """The local-runtime hooks a step decorator overrides (or sets as a *_ctx hook)."""
    from metaflow.decorators import StepDecorator

    out = []
    for hook in RUNTIME_HOOKS:
        if getattr(type(deco), hook, None) is not getattr(StepDecorator, hook, None):
            out.append(hook)
        elif getattr(deco, f"{hook}_ctx", None) is not None:
            out.append(f"{hook}_ctx")
    return out


def _launcher_of(names: Iterable[str]) -> Launcher | None:
    """The decorator that launches a step's task: remote compute wins over an environment
    (a @conda step on @kubernetes runs in the pod, in the environment Metaflow bootstraps)."""
    found = [cast(Launcher, n) for n in names if n in LAUNCHER_DECORATORS]
    remote = [n for n in found if n in REMOTE_COMPUTE_DECORATORS]
    ordered = remote or found
    return ordered[0] if ordered else None


def build_step(node: Any, graph: Any, op_name: str, datastore_type: str = "local") -> StepIR:
    """Read one graph node and its decorators into a StepIR (refusing what cannot work)."""
    decos = list(node.decorators)
    launcher = _launcher_of(d.name for d in decos)
    for deco in decos:
        if deco.name in INTERNAL_DECORATORS:
            continue
        if deco.name in REMOTE_COMPUTE_DECORATORS:
            if datastore_type not in REMOTE_DATASTORES[deco.name]:
                raise IRError(remote_datastore_refusal(deco.name, f"on step {node.name!r}"))
        if deco.name in LAUNCHER_DECORATORS:
            if node.parallel_step:
                raise IRError(
                    f"step {node.name!r}: @{deco.name} with @parallel is not supported by dagster-metaflow yet"
                )
            continue
        if deco.name in REFUSED_STEP_DECORATORS:
            raise IRError(
                f"step {node.name!r}: decorator @{deco.name} is not supported: {REFUSED_STEP_DECORATORS[deco.name]}"
            )
        if deco.name in SUPPORTED_STEP_DECORATORS or getattr(deco, "IS_PARALLEL", False):
            # (@parallel and its subclasses, e.g. @pytorch_parallel: one control task)
            continue
        hooks = runtime_hooks_of(deco)
        if hooks:
            raise IRError(
                f"step {node.name!r}: decorator @{deco.name} needs Metaflow's local runtime hook "
                f"{hooks[0]}(), which runs only under `flow.py run`; dagster-metaflow cannot run it"
            )

    retry, user_retries = _retry_spec(node.name, decos)
    timeout = None
    env: tuple[tuple[str, str], ...] = ()
    resources: tuple[tuple[str, str], ...] = ()
    for deco in decos:
        if deco.name == "timeout":
            timeout = _timeout_seconds(node.name, deco.attributes)
        elif deco.name == "environment":
            env = _stringify_mapping(node.name, "environment", deco.attributes.get("vars") or {})
        elif deco.name == "resources":
            resources = _stringify_mapping(node.name, "resources", deco.attributes)
    specs = tuple(
        deco.make_decorator_spec()
        for deco in decos
        if not deco.statically_defined and deco.inserted_by is None
    )
    join_kind: JoinKind | None = None
    if node.type == "join" and node.split_parents:
        join_kind = "foreach" if graph[node.split_parents[-1]].type == "foreach" else "static"
    return StepIR(
        name=node.name,
        op_name=op_name,
        kind=_step_kind(node, graph),
        next_steps=tuple(node.out_funcs),
        in_steps=tuple(sorted(node.in_funcs)),
        foreach_depth=_foreach_depth(node, graph),
        split_parents=tuple(node.split_parents),
        matching_join=node.matching_join,
        join_kind=join_kind,
        switch_cases=tuple(sorted((str(k), str(v)) for k, v in (node.switch_cases or {}).items())),
        condition=node.condition,
        is_parallel=bool(node.parallel_step),
        parallel_foreach=bool(node.parallel_foreach),
        num_parallel=int(node.num_parallel or 0) if not callable(node.num_parallel) else 0,
        retry=retry,
        max_user_code_retries=user_retries,
        timeout_seconds=timeout,
        env=env,
        resources=resources,
        decorator_specs=specs,
        has_card=any(d.name == "card" for d in decos)
        or any(s.split(":")[0] == "card" for s in specs),
        launcher=launcher,
        doc=(node.doc or "").strip(),
    )


def topological_steps(graph: Any) -> list[Any]:
    """Graph nodes in a deterministic topological order (ignoring recursive self-edges)."""
    nodes = {n.name: n for n in graph}
    indegree = {name: 0 for name in nodes}
    for n in nodes.values():
        for out in set(n.out_funcs):
            if out != n.name:
                indegree[out] += 1
    order: list[Any] = []
    ready = sorted(name for name, d in indegree.items() if d == 0)
    while ready:
        name = ready.pop(0)
        order.append(nodes[name])
        for out in sorted(set(nodes[name].out_funcs)):
            if out == name:
                continue
            indegree[out] -= 1
            if indegree[out] == 0:
                ready.append(out)
                ready.sort()
    if len(order) != len(nodes):
        cyclic = sorted(set(nodes) - {n.name for n in order})
        raise IRError(f"steps {', '.join(cyclic)} form a cycle that is not a self-loop")
    return order


_PARAM_TYPES: dict[str, ParamType] = {"int": "int", "float": "float", "bool": "bool", "str": "str"}


def build_parameter(var: str, param: Any, taken: set[str]) -> ParameterIR:
    """Read one metaflow.Parameter into a typed Config field."""
    from metaflow.parameters import JSONTypeClass, deploy_time_eval

    if "required" not in param.kwargs:
        # Metaflow's CLI initialises parameters (resolving config expressions and merging
        # explicit arguments) before commands run; do the same when called outside it.
        param.init()
    kwargs = param.kwargs
    ptype = kwargs.get("type")
    if isinstance(ptype, JSONTypeClass):
        typ: ParamType = "json"
    elif isinstance(ptype, type) and ptype.__name__ in _PARAM_TYPES:
        typ = _PARAM_TYPES[ptype.__name__]
    else:
        typ = "str"  # FilePath and custom click types travel as text
    has_default = "default" in kwargs
    try:
        default = deploy_time_eval(kwargs.get("default")) if has_default else None
    except Exception as exc:  # a deploy-time function failed
        raise IRError(f"parameter {param.name!r}: evaluating its default failed: {exc}") from exc
    if default is not None:
        if typ == "json":
            default = default if isinstance(default, str) else json.dumps(default, sort_keys=True)
        elif typ == "bool":
            default = bool(default)
        elif typ in ("int", "float"):
            try:
                default = int(default) if typ == "int" else float(default)
            except (TypeError, ValueError) as exc:
                raise IRError(
                    f"parameter {param.name!r}: default {default!r} is not a valid {typ}"
                ) from exc
        else:
            default = str(default)
    required = bool(kwargs.get("required", False)) and default is None
    return ParameterIR(
        name=param.name,
        field_name=naming.config_field_name(param.name, taken),
        type=typ,
        required=required,
        has_default=has_default and default is not None,
        default=default,
        help=kwargs.get("help"),
    )


def reserved_config_fields() -> set[str]:
    """Names a pydantic/Dagster Config field may not take (BaseModel's own attributes)."""
    from pydantic import BaseModel

    return {n for n in dir(BaseModel)} | {"model_config", "model_fields"}


def build_flow_ir(flow: Any, graph: Any, options: IROptions) -> FlowIR:
    """Read a loaded Metaflow flow (instance or class) and its graph into a FlowIR."""
    nodes = topological_steps(graph)
    ops = naming.op_names(n.name for n in nodes)
    steps = tuple(build_step(n, graph, ops[n.name], options.datastore_type) for n in nodes)

    taken = reserved_config_fields()
    params: list[ParameterIR] = []
    seen: set[str] = set()
    for var, param in flow._get_parameters():
        if getattr(param, "IS_CONFIG_PARAMETER", False):
            continue
        norm = param.name.lower()
        if norm in seen:
            raise IRError(f"parameter {param.name!r} is defined twice (names are case-insensitive)")
        seen.add(norm)
        params.append(build_parameter(var, param, taken))

    from metaflow import current

    try:
        automation = build_automation(
            flow,
            [(p.name, p.has_default or not p.required) for p in params],
            current.get("project_name"),
            current.get("branch_name"),
        )
    except AutomationError as exc:
        raise IRError(str(exc)) from None
    # Celery workers may share the run worker's machine (and so its local datastore);
    # a Kubernetes pod never does
    if options.executor == "k8s" and options.datastore_type == "local":
        raise IRError(
            "--executor k8s runs every step in its own pod, which cannot read the local "
            "datastore: use a remote one (e.g. --datastore=s3)"
        )

    config_class = naming.python_identifier(
        naming.to_dagster_alphabet(graph.name) + "Parameters", set()
    )
    return FlowIR(
        **{f.name: getattr(options, f.name) for f in fields(IROptions)},
        flow_name=graph.name,
        start_step=graph.start_step,
        end_step=graph.end_step,
        steps=steps,
        parameters=tuple(params),
        doc=(graph.doc or "").strip(),
        config_class_name=config_class,
        automation=automation,
    )
