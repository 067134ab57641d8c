"""Compiling a loaded Metaflow flow into a Dagster definitions file: the library API that
`dagster create`, the Deployer (through the CLI) and any other front end call.

    source = flow_source(obj)          # Metaflow's CLI state, read once into plain data
    compiled = compile_flow(source, CompileOptions(job_name=..., out_file=...))
    compiled.text                      # the definitions file; compiled.deployment(...) its record

Nothing here writes the definitions file or a deployment record, or chooses a production
token: the caller does (see `cli.create`). Compiling does attach `--with` decorators to the
flow and saves the flow's code package to its datastore, as Metaflow's schedulers do.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import __version__, naming
from .errors import CompileError
from .notifications import Notifications, notify_sensor_name

if TYPE_CHECKING:
    from .deployments import Deployment, ParameterInfo
    from .ir import FlowIR

Echo = Callable[..., None]

# Metaflow configuration that may be written into a generated file. Everything else, and
# anything that looks like a credential, is read from the environment at run time.
BAKE_PREFIXES = (
    "METAFLOW_DEFAULT_",
    "METAFLOW_DATASTORE_",
    "METAFLOW_DATATOOLS_",
    "METAFLOW_SERVICE_URL",
    "METAFLOW_CARD_",
    "METAFLOW_PROFILE",
)
SECRET_MARKERS = (
    "AUTH",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "HEADERS",
    "ACCESS_KEY",
    "PRIVATE",
    "CREDENTIAL",
)


@dataclass(frozen=True, kw_only=True)
class CompileOptions:
    """What `dagster create` is asked for: its options, with the job name resolved (see
    `resolve_job_name`) and the production token chosen by the caller."""

    job_name: str
    out_file: str  # where the definitions file will be written (names it, places flow_file)
    tags: tuple[str, ...] = ()
    namespace: str | None = None  # steps' namespace instead of production:<token>
    with_decorators: tuple[str, ...] = ()  # `--with` specs, e.g. "retry" or "resources:cpu=4"
    workflow_timeout: int | None = None
    workflow_priority: int | None = None  # Dagster run priority (`dagster/priority`)
    workflow_title: str | None = None  # shown first in the job's description
    workflow_description: str | None = None  # the job's description; default: the docstring
    max_workers: int = 16
    executor: str = "threads"
    # the executor's own config fields: JSON text (`--executor-config`) or a mapping
    executor_config: str | Mapping[str, Any] | None = None
    owner: str | None = None  # the deploying user
    production_token: str | None = None  # runs' namespace production:<token>; None: as the owner
    assets: tuple[str, ...] = ()  # end-step artifacts declared as assets (`--asset`)
    asset_automation: bool = False  # `--asset-automation`: AutomationCondition, not a sensor
    regenerate: str | None = None  # the file's "Regenerate:" line; None: the compiling command
    notifications: Notifications | None = None  # run-end messages (--notify-*)
    auto_emit_events: bool = True  # publish metaflow.<Flow>.end on success (--auto-emit-events)


@dataclass(frozen=True, kw_only=True)
class FlowSource:
    """The flow Metaflow loaded, and what its top-level options (--metadata, --datastore,
    --config, @project's --branch/--production) made of it. `flow_source` reads it from
    Metaflow's CLI state; another front end fills it in from its own."""

    flow: Any  # the FlowSpec
    graph: Any  # its FlowGraph
    environment: Any  # Metaflow environment (--environment)
    flow_datastore: Any  # FlowDataStore (--datastore, --datastore-root)
    logger: Echo  # Metaflow's logger, for decorators' step_init
    package_suffixes: Any  # --package-suffixes
    metadata_type: str  # --metadata
    metadata: str  # Metaflow's metadata spec, kept in the record
    flow_file: str  # real path of the flow file
    command: tuple[str, ...]  # the command line that compiled it: flow file name, arguments
    top_level_options: tuple[str, ...] = ()  # flow decorators' (e.g. @project --branch)
    config_values: str | None = None  # JSON of the flow's resolved configs (--config ...)
    project_name: str | None = None
    branch_name: str | None = None
    project_flow_name: str | None = None  # @project's <project>.<branch>.<Flow>


@dataclass(frozen=True, kw_only=True)
class CompiledFlow:
    """A compiled flow: its IR, the definitions file's text, and what its record needs."""

    ir: FlowIR
    text: str
    flow_name: str
    flow_file: str
    definitions_file: str  # real path of options.out_file
    owner: str
    metadata: str
    parameters: tuple[ParameterInfo, ...]
    code_package: dict[str, str]
    automation: dict[str, Any]
    project_name: str | None = None
    branch_name: str | None = None

    def deployment(self, production_token: str, extra: dict[str, Any]) -> Deployment:
        """The deployment record of this compilation (`extra`: see `runtime.sensors.watch_extra`)."""
        from .deployments import Deployment
        from .translator import graph_name

        ir = self.ir
        return Deployment(
            name=ir.job_name,
            flow_name=self.flow_name,
            flow_file=self.flow_file,
            definitions_file=self.definitions_file,
            owner=self.owner,
            production_token=production_token,
            start_op=f"{graph_name(ir.job_name)}.{ir.step(ir.start_step).op_name}",
            parameters=self.parameters,
            project_name=self.project_name,
            branch_name=self.branch_name,
            metadata=self.metadata,
            tool_version=__version__,
            flow_fingerprint=ir.flow_fingerprint or "",
            code_package=self.code_package,
            extra=extra,
            automation=self.automation,
        )


def flow_source(obj: Any) -> FlowSource:
    """Metaflow's CLI state (click's `obj`) as a FlowSource: the one place compiling reads it."""
    from metaflow import current
    from metaflow.decorators import flow_decorators
    from metaflow.user_configs.config_parameters import dump_config_values
    from metaflow.util import dict_to_cli_options

    opts: dict[str, Any] = {}
    for deco in flow_decorators(obj.flow):
        opts.update(deco.get_top_level_options())
    dumped = dump_config_values(obj.flow)
    is_project = "project" in obj.flow._flow_decorators
    return FlowSource(
        flow=obj.flow,
        graph=obj.graph,
        environment=obj.environment,
        flow_datastore=obj.flow_datastore,
        logger=obj.logger,
        package_suffixes=obj.package_suffixes,
        metadata_type=obj.metadata.TYPE,
        metadata=obj.metadata.metadata_str(),
        flow_file=os.path.realpath(sys.argv[0]),
        command=(os.path.basename(sys.argv[0]), *sys.argv[1:]),
        top_level_options=tuple(dict_to_cli_options(opts)),
        config_values=json.dumps(dumped, sort_keys=True) if dumped else None,
        project_name=current.get("project_name"),
        branch_name=current.get("branch_name"),
        project_flow_name=current.get("project_flow_name") if is_project else None,
    )


def resolve_job_name(name: str | None, flow_name: str, project_flow_name: str | None = None) -> str:
    """The deployment (= Dagster job) name: `name` if valid, else the flow's name, or
    P_<branch>_<Flow> for a @project flow."""
    if name is not None:
        problem = naming.validate_job_name(name)
        if problem:
            raise CompileError(f"--name: {problem}")
        return name
    if project_flow_name:  # proj.branch.Flow -> proj_branch_Flow; branches may contain '-' and '.'
        return naming.job_name_for(project_flow_name.replace(".", "_"))
    return naming.job_name_for(flow_name)


def compile_flow(
    source: FlowSource, options: CompileOptions, echo: Echo | None = None
) -> CompiledFlow:
    """Compile the flow: build its IR, render the definitions file, check that Dagster loads
    it, and save the code package. Raises CompileError; `echo` gets progress and warnings."""
    from .codegen import CodegenError, render
    from .definitions_file import dagster_load_problem

    say = echo or _stderr
    ir = build_ir(source, options)
    try:
        text = render(ir)
    except CodegenError as exc:
        raise CompileError(str(exc)) from None
    problem = dagster_load_problem(text, options.out_file, ir.job_name)
    if problem:
        raise CompileError(
            f"Dagster refused the job generated for this flow ({problem}); no file was written. "
            "This is a dagster-metaflow bug: please report it with the flow."
        )
    remote = next((s for s in ir.steps if s.remote), None)
    code_package = save_code_package(
        source, say, f"@{remote.remote} on step {remote.name!r}" if remote else None
    )
    return CompiledFlow(
        ir=ir,
        text=text,
        flow_name=source.flow.name,
        flow_file=source.flow_file,
        definitions_file=os.path.realpath(options.out_file),
        owner=options.owner or "",
        metadata=source.metadata,
        parameters=parameter_infos(source, ir),
        code_package=code_package,
        automation=automation_record(ir),
        project_name=source.project_name,
        branch_name=source.branch_name,
    )


def build_ir(source: FlowSource, options: CompileOptions) -> FlowIR:
    """The flow's IR for these options (attaching the `--with` decorators to the flow)."""
    from metaflow.tagging_util import validate_tags

    from .ir import IRError, IROptions, build_flow_ir
    from .runtime.package import file_fingerprint

    engine_config = executor_config(options.executor, options.executor_config)  # checked first
    _attach_decorators(source, options.with_decorators)
    validate_tags(list(options.tags))
    out_dir = os.path.dirname(os.path.realpath(options.out_file))
    try:
        rel = os.path.relpath(source.flow_file, out_dir)
        flow_ref = rel if not rel.startswith("..") else source.flow_file
    except ValueError:
        flow_ref = source.flow_file
    ir_options = IROptions(
        job_name=options.job_name,
        flow_file=flow_ref,
        tags=tuple(options.tags),
        namespace=options.namespace,
        max_workers=options.max_workers,
        workflow_timeout=options.workflow_timeout,
        workflow_priority=options.workflow_priority,
        workflow_title=options.workflow_title,
        notifications=options.notifications,
        auto_emit_events=options.auto_emit_events,
        workflow_description=options.workflow_description,
        top_level_args=top_level_args(source),
        environment=baked_environment(dict(os.environ)),
        regenerate_command=options.regenerate
        or "python " + " ".join(shlex.quote(a) for a in source.command),
        tool_version=__version__,
        output_name=os.path.basename(options.out_file),
        datastore_type=source.flow_datastore.TYPE,
        datastore_root=source.flow_datastore.datastore_root,
        executor=options.executor,
        executor_config=engine_config,
        owner=options.owner,
        production_token=options.production_token,
        config_values=source.config_values,
        flow_fingerprint=file_fingerprint(source.flow_file),
        assets=checked_assets(options.assets),
        asset_automation=options.asset_automation,
    )
    try:
        return build_flow_ir(source.flow, source.graph, ir_options)
    except IRError as exc:
        raise CompileError(str(exc)) from None


def _attach_decorators(source: FlowSource, specs: tuple[str, ...]) -> None:
    """Add the `--with` step decorators to every step, as `flow.py run --with` does."""
    from metaflow import decorators

    from .ir import remote_datastore_refusal
    from .step_decorators import REMOTE_DATASTORES

    for spec in specs:
        deco = spec.split(":")[0]
        if deco in REMOTE_DATASTORES and source.flow_datastore.TYPE not in REMOTE_DATASTORES[deco]:
            # (Metaflow's own check, in the decorator's step_init, would name no step)
            raise CompileError(remote_datastore_refusal(deco, "given with --with"))
    if specs:
        decorators._attach_decorators(source.flow, list(specs))
        decorators._init_step_decorators(
            source.flow, source.graph, source.environment, source.flow_datastore, source.logger
        )


def top_level_args(source: FlowSource) -> tuple[str, ...]:
    """The top-level options every step command of the generated job passes to the flow."""
    return source.top_level_options + (
        "--quiet",
        f"--metadata={source.metadata_type}",
        f"--environment={source.environment.TYPE}",
        "--event-logger=nullSidecarLogger",
        "--monitor=nullSidecarMonitor",
        "--no-pylint",
    )


def is_secret_name(name: str) -> bool:
    """Whether a setting's name suggests a credential (never written into a file)."""
    upper = name.upper()
    return any(marker in upper for marker in SECRET_MARKERS)


def baked_environment(environ: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Allow-listed METAFLOW_* settings to bake into the file. Secret-looking ones are never
    written: steps inherit the run worker's environment, so they are read at run time."""
    return tuple(
        (name, environ[name])
        for name in sorted(environ)
        if name.startswith(BAKE_PREFIXES) and not is_secret_name(name)
    )


def executor_config(executor: str, given: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """`--executor-config`: a JSON object the executor's own config schema accepts (checked
    here, against the installed integration package, so a typo fails at create)."""
    from .codegen import ENGINE_EXECUTORS

    engine = ENGINE_EXECUTORS.get(executor)
    if engine is None:
        if given:
            raise CompileError(
                f"--executor-config is for --executor {'/'.join(ENGINE_EXECUTORS)}, not {executor}"
            )
        return {}
    module, name = engine
    try:
        executor_def = getattr(importlib.import_module(module), name)
    except ImportError:  # each engine has the extra of its name
        raise CompileError(
            f"--executor {executor} needs the {module.replace('_', '-')} package: "
            f"pip install 'dagster-metaflow[{executor}]'"
        ) from None
    try:
        config = json.loads(given) if isinstance(given, str) and given else dict(given or {})
    except ValueError as exc:
        raise CompileError(f"--executor-config is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CompileError("--executor-config must be a JSON object")
    from .runtime.engines import executor_with_defaults

    try:
        executor_with_defaults(executor_def, config)
    except Exception as exc:
        raise CompileError(f"--executor-config: {str(exc).splitlines()[0]}") from None
    return config


def save_code_package(
    source: FlowSource, echo: Echo, required_by: str | None = None
) -> dict[str, str]:
    """Metaflow's code package of the flow (flow file, modules beside it with
    --package-suffixes), saved in the flow's datastore as Metaflow's schedulers do: a
    deployment runs the code it was compiled from. Kept in the deployment record, not in
    the generated file (a package carries its creation time; the file stays deterministic).
    Empty, with a warning, where Metaflow cannot package the code, unless a remote step
    needs it (`required_by`): then compiling stops with the reason."""
    from metaflow.package import MetaflowPackage

    echo("Packaging the flow's code...")
    try:
        pkg = MetaflowPackage(
            source.flow, source.environment, echo, suffixes=source.package_suffixes
        )
        url, sha = source.flow_datastore.save_data([pkg.blob], len_hint=1)[0]
    except Exception as exc:
        why = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        )
        if required_by:
            raise CompileError(
                f"{required_by} needs the flow's code package in the datastore, which could not "
                f"be saved ({why}); no file was written"
            ) from None
        echo(
            f"Warning: could not package the flow's code ({why}); runs will refuse to start "
            "if the flow file changes before the next `create`.",
            err=True,
        )
        return {}
    return {"url": str(url), "sha": str(sha), "metadata": str(pkg.package_metadata)}


def parameter_infos(source: FlowSource, ir: FlowIR) -> tuple[ParameterInfo, ...]:
    """The flow's parameters as the record keeps them (for trigger/resume options)."""
    from .deployments import ParameterInfo

    by_name = {p.name: p for p in ir.parameters}
    out = []
    for var, param in source.flow._get_parameters():
        if getattr(param, "IS_CONFIG_PARAMETER", False) or param.name not in by_name:
            continue
        p = by_name[param.name]
        out.append(
            ParameterInfo(
                name=p.name,
                python_var_name=var,
                type=p.type,
                required=p.required,
                help=p.help or "",
            )
        )
    return tuple(out)


def automation_record(ir: FlowIR) -> dict[str, Any]:
    """What the deployment schedules/waits for, as the Deployer and `describe` show it."""
    auto = ir.automation
    out: dict[str, Any] = {}
    if auto.schedule is not None:
        out["schedule"] = {
            "name": f"{ir.job_name}_schedule",
            "cron": auto.schedule.cron,
            "timezone": auto.schedule.timezone,
        }
    if auto.triggers:
        kind = auto.triggers[0].kind
        out["sensor"] = f"{ir.job_name}_{'trigger_on_finish' if kind == 'run' else 'trigger'}"
        out["triggers"] = [t.name for t in auto.triggers]
        out["trigger_kind"] = "trigger_on_finish" if kind == "run" else "trigger"
    if auto.exit_hooks is not None:
        out["exit_hooks"] = {
            "on_success": list(auto.exit_hooks.on_success),
            "on_error": list(auto.exit_hooks.on_error),
        }
    n = ir.notifications
    if n is not None:  # what and whom, never the secrets
        out["notifications"] = {
            "on": list(n.outcomes),
            "services": list(n.services),
            "sensors": [notify_sensor_name(ir.job_name, o) for o in n.outcomes],
        }
    if ir.auto_emit_events:
        from .runtime.sensors import run_finished_event_names

        out["events_out"] = run_finished_event_names(
            ir.flow_name, ir.end_step, auto.project_name, auto.branch_name
        )
    return out


def _stderr(line: str, **kwargs: Any) -> None:
    """Default `echo`: plain lines on stderr (Metaflow's CLI echo styles them)."""
    print(line, file=sys.stderr)


__all__ = [
    "CompileError",
    "CompileOptions",
    "CompiledFlow",
    "FlowSource",
    "baked_environment",
    "compile_flow",
    "flow_source",
    "resolve_job_name",
]


def checked_assets(names: Sequence[str]) -> tuple[str, ...]:
    """`--asset` names, deduplicated in order: each must be a public artifact name."""
    out: dict[str, None] = {}
    for name in names:
        if not name.isidentifier() or name.startswith("_"):
            raise CompileError(
                f"--asset {name!r}: not an artifact name (a Python identifier not starting "
                "with '_', as in `self.model = ...`)"
            )
        out[name] = None
    return tuple(out)
