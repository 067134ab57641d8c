"""`python flow.py dagster ...`: the Metaflow CLI group of dagster-metaflow."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from metaflow import parameters
from metaflow._vendor import click
from metaflow.exception import MetaflowException

from . import __version__, naming

if TYPE_CHECKING:
    from .ir import FlowIR

# Metaflow imports this module for every command it runs (each step included), so the
# compiler (Jinja2, IR) is imported only inside the commands that use it.

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
SECRET_MARKERS = ("AUTH", "TOKEN", "SECRET", "PASSWORD", "HEADERS", "ACCESS_KEY", "PRIVATE", "CREDENTIAL")


# Dagster run statuses of a run that has not ended
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
EXECUTORS = ("threads", "multiprocess", "forkserver", "in_process", "celery", "k8s")
IDENTITIES = ("production", "user")


class DagsterMetaflowException(MetaflowException):
    headline = "dagster-metaflow error"


class IncorrectProductionToken(DagsterMetaflowException):
    """Someone who is not the deployer changes a deployment without its production token
    (CLI and Deployer API alike; Metaflow's Argo integration has an exception of this name)."""


def is_secret_name(name: str) -> bool:
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


@click.group()
def cli() -> None:
    pass


@cli.group(help="Compile this flow to a Dagster job, deploy it to a Dagster instance and operate it.")
@click.option(
    "--name",
    default=None,
    help="Deployment (= Dagster job) name; default: the flow name, or P_<branch>_<Flow> with @project.",
)
@click.pass_obj
def dagster(obj: Any, name: str | None = None) -> None:
    obj.check(obj.graph, obj.flow, obj.environment, pylint=obj.pylint)
    obj.dagster_name = name
    # every subcommand needs Dagster: refuse an untested one here, in one line, rather than
    # as a "Dagster refused the job" at create or a traceback later
    try:
        from . import _dagster_private  # noqa: F401
    except ImportError as exc:
        raise DagsterMetaflowException(str(exc)) from None


def _resolve_job_name(obj: Any, name: str | None) -> str:
    name = name or getattr(obj, "dagster_name", None)
    if name is not None:
        problem = naming.validate_job_name(name)
        if problem:
            raise DagsterMetaflowException(f"--name: {problem}")
        return name
    from metaflow import current

    project_flow = current.get("project_flow_name") if "project" in obj.flow._flow_decorators else None
    if project_flow:
        # proj.branch.Flow -> proj_branch_Flow; branch names may contain '-' and '.'
        return naming.job_name_for(project_flow.replace(".", "_"))
    return naming.job_name_for(obj.flow.name)


def _token_prefix(obj: Any, job_name: str) -> str:
    """Where Metaflow keeps this deployment's production token (as its schedulers do)."""
    from metaflow import current

    from .deployments import token_prefix

    return token_prefix(job_name, current.get("project_name"), current.get("branch_name"))


def _username() -> str:
    from metaflow.util import get_username

    user = get_username()
    if not user:
        raise DagsterMetaflowException(
            "no user name: set METAFLOW_USER (Metaflow ignores USER=root)"
        )
    return user


def _check_authorized(obj: Any, prev: Any, authorize: str | None, token_prefix: str, action: str) -> None:
    """A deployment made by someone else may only be changed with its production token
    (the token file is found from the record: `token_prefix` is the caller's view of it)."""
    from metaflow.util import get_username

    from .deployments import authorization_problem

    problem = authorization_problem(prev, authorize, get_username(), action)
    if problem:
        raise IncorrectProductionToken(problem)


def _resolve_token(
    obj: Any,
    prev: Any,
    token_prefix: str,
    authorize: str | None,
    given_token: str | None,
    generate_new_token: bool,
    identity: str = "production",
) -> str:
    """The production token of a (re)deployment, as `argo-workflows create` resolves it."""
    from metaflow import current
    from metaflow.plugins.aws.step_functions.production_token import new_token, store_token

    _check_authorized(obj, prev, authorize, token_prefix, "create")
    prev_token = prev.production_token if prev is not None else None
    if given_token:
        if current.get("project_name"):
            raise DagsterMetaflowException(
                "--new-token is not supported for @project flows; use --generate-new-token"
            )
        token = given_token[len("production:") :] if given_token.startswith("production:") else given_token
    elif prev_token is None or generate_new_token:
        token = new_token(token_prefix, prev_token)
        if token is None:
            raise DagsterMetaflowException(
                "--generate-new-token is not supported after --new-token; use --new-token"
            )
        obj.echo("A new production token was generated.")
    else:
        token = prev_token
    if identity == "production":
        obj.echo("The namespace of this production flow is")
        obj.echo(f"    production:{token}", fg="green")
    else:
        obj.echo(f"Runs run as {_username()} (--identity user), in the namespace")
        obj.echo(f"    user:{_username()}", fg="green")
    obj.echo("Others can deploy new versions of it with")
    obj.echo(f"    python {os.path.basename(sys.argv[0])} dagster create --authorize {token}", fg="green")
    store_token(token_prefix, token)
    return str(token)


def _parameter_infos(obj: Any, ir: FlowIR) -> tuple[Any, ...]:
    from .deployments import ParameterInfo

    by_name = {p.name: p for p in ir.parameters}
    out = []
    for var, param in obj.flow._get_parameters():
        if getattr(param, "IS_CONFIG_PARAMETER", False) or param.name not in by_name:
            continue
        p = by_name[param.name]
        out.append(
            ParameterInfo(
                name=p.name, python_var_name=var, type=p.type, required=p.required, help=p.help or ""
            )
        )
    return tuple(out)


def _open_instance(obj: Any) -> Any:
    from .deployments import dagster_home, open_instance

    home, chosen = dagster_home()
    if chosen and not getattr(obj, "_home_announced", False):
        obj.echo(
            f"DAGSTER_HOME is not set: using the dagster-metaflow instance at {home} "
            "(export DAGSTER_HOME to use another one).",
            err=True,
        )
        obj._home_announced = True
    return open_instance(home)


def _deployment_error(exc: Exception) -> DagsterMetaflowException:
    """A deployments error as the one line this CLI prints, naming this flow file."""
    return DagsterMetaflowException(str(exc).replace("<flow>.py", os.path.basename(sys.argv[0])))


def _deployment(obj: Any, instance: Any, corrupt_ok: bool = False) -> Any:
    """This flow's deployment; with `corrupt_ok`, an unreadable record gives what could be
    read of it (owner, token) so that `delete` can remove it after the usual check."""
    from .deployments import CorruptRecord, Deployment, DeploymentError, require

    name = _resolve_job_name(obj, None)
    try:
        return require(instance, name)
    except CorruptRecord as exc:
        if not corrupt_ok:
            raise _deployment_error(exc) from None
        return exc.partial or Deployment(name, obj.flow.name, "", "", "", "")
    except DeploymentError as exc:
        raise _deployment_error(exc) from None


def _known_deployment(obj: Any, instance: Any) -> Any:
    """The deployment whose runs `status`, `terminate` and `list-runs` look at. Runs are found
    by Dagster job name, so they stay reachable when the record was deleted (its tombstone
    keeps owner and token) or is corrupt (a warning, then what could be read of it)."""
    from dataclasses import replace

    from .deployments import CorruptRecord, Deployment, deleted, get

    name = _resolve_job_name(obj, None)
    try:
        dep = get(instance, name)
    except CorruptRecord as exc:
        obj.echo(f"Warning: {_deployment_error(exc).message}", err=True)
        dep = exc.partial or Deployment(name, obj.flow.name, "", "", "", "")
    if dep is None:
        obj.echo(f"Deployment {name!r} is not in the instance (deleted?): looking for runs of job {name}.", err=True)
        dep = deleted(instance, name) or Deployment(name, obj.flow.name, "", "", "", "")
    return replace(dep, flow_name=dep.flow_name or obj.flow.name)


def _write_attribute_file(path: str | None, content: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(content, f)


GENERATED_MARK = "Generated by dagster-metaflow"


def _check_output_path(out_file: str, force: bool) -> None:
    """One clear line for an output FILE that cannot or must not be written."""
    real = os.path.realpath(out_file)
    if real == os.path.realpath(sys.argv[0]):
        raise DagsterMetaflowException(
            f"refusing to overwrite the flow file {sys.argv[0]!r}; choose another output FILE"
        )
    if os.path.isdir(real):
        raise DagsterMetaflowException(
            f"output FILE {out_file!r} is a directory; give a file name, e.g. {os.path.join(out_file, 'flow_dagster.py')!r}"
        )
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise DagsterMetaflowException(f"cannot write {out_file!r}: directory {parent!r} does not exist")
    if os.path.exists(real) and not force:
        try:
            with open(real, encoding="utf-8", errors="replace") as f:
                head = f.read(4096)
        except OSError as exc:
            raise DagsterMetaflowException(f"cannot read existing {out_file!r}: {exc.strerror}") from None
        if GENERATED_MARK not in head:
            raise DagsterMetaflowException(
                f"{out_file!r} exists and was not written by dagster-metaflow; "
                "choose another FILE or pass --force to overwrite it"
            )


def _write_atomically(path: str, text: str) -> None:
    """Write through a temp file in the same directory; never leave the temp file behind."""
    import tempfile

    folder = os.path.dirname(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(prefix=".dagster_metaflow-", suffix=".py.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _positive(ctx: Any, param: Any, value: int | None) -> int | None:
    # a plain int option with a check: Metaflow's Runner/Deployer API knows no IntRange
    if value is not None and value < 1:
        raise click.BadParameter(f"{value} is not >= 1")
    return value


@dagster.command(help="Compile this flow into a Dagster definitions file and record the deployment.")
@click.argument("file", required=False, default=None)
@click.option("--name", default=None, help="Dagster job name (same as `dagster --name`).")
@click.option("--tag", "tags", multiple=True, default=None, help="Metaflow tag for every run (repeatable).")
@click.option(
    "--namespace",
    "user_namespace",
    default=None,
    help="Namespace the steps run in instead of the production namespace.",
)
@click.option(
    "--with",
    "with_decorators",
    multiple=True,
    default=None,
    help="Add a step decorator to every step, e.g. --with=retry or --with=resources:cpu=4.",
)
@click.option(
    "--workflow-timeout",
    default=None,
    type=int,
    callback=_positive,
    help="Stop the whole run after this many seconds.",
)
@click.option(
    "--max-workers",
    default=16,
    show_default=True,
    type=int,
    callback=_positive,
    help="Maximum number of steps running at once in one run.",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="threads",
    show_default=True,
    help="Dagster executor of the job: threads (one thread per running step, fastest), "
    "multiprocess/forkserver (one process per step), in_process (one step at a time), "
    "celery (dagster-celery workers) or k8s (one Kubernetes pod per step, dagster-k8s).",
)
@click.option(
    "--executor-config",
    default=None,
    help="JSON object of the executor's own config fields, baked into the job as defaults "
    "a launch may override in run config, e.g. '{\"broker\": \"redis://host:6379/0\"}' "
    "for celery. Only for --executor celery/k8s.",
)
@click.option(
    "--identity",
    type=click.Choice(IDENTITIES),
    default="production",
    show_default=True,
    help="Whom the runs run as: the deployment's production token (namespace production:<token>, "
    "as Argo Workflows) or the deploying user (namespace user:<you>, as `flow.py run`).",
)
@click.option("--authorize", default=None, help="Authorize this deployment with a production token.")
@click.option(
    "--generate-new-token",
    is_flag=True,
    default=False,
    help="Generate a new production token (moves the deployment to a new namespace).",
)
@click.option("--new-token", "given_token", default=None, help="Use this production token.")
@click.option(
    "--force",
    is_flag=True,
    default=False,
    help="Overwrite FILE even if dagster-metaflow did not write it, and a corrupt deployment record.",
)
@click.option("--deployer-attribute-file", default=None, hidden=True, help="Used by Metaflow's Deployer API.")
@click.pass_obj
def create(
    obj: Any,
    file: str | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    user_namespace: str | None = None,
    with_decorators: Sequence[str] = (),
    workflow_timeout: int | None = None,
    max_workers: int = 16,
    executor: str = "threads",
    executor_config: str | None = None,
    identity: str = "production",
    authorize: str | None = None,
    generate_new_token: bool = False,
    given_token: str | None = None,
    force: bool = False,
    deployer_attribute_file: str | None = None,
) -> None:
    from . import deployments

    job_name = _resolve_job_name(obj, name)
    out_file = file or f"{job_name.lower()}_dagster.py"
    _check_output_path(out_file, force)
    obj.echo(f"Compiling *{obj.flow.name}* to Dagster job *{job_name}*...", bold=True)
    owner = _username()
    with _open_instance(obj) as instance:
        try:
            prev = deployments.get(instance, job_name)
        except deployments.CorruptRecord as exc:
            if not force:
                raise _deployment_error(exc) from None
            obj.echo(f"Overwriting the corrupt deployment record {exc.key!r} (--force).", err=True)
            prev = exc.partial
        token = _resolve_token(
            obj, prev, _token_prefix(obj, job_name), authorize, given_token, generate_new_token, identity
        )
        ir = build_ir_from_obj(
            obj,
            out_file=out_file,
            job_name=job_name,
            tags=tags or (),
            namespace=user_namespace,
            with_decorators=with_decorators or (),
            workflow_timeout=workflow_timeout,
            max_workers=max_workers,
            executor=executor,
            executor_config=_executor_config(executor, executor_config),
            owner=owner,
            production_token=token if identity == "production" else None,
        )
        from .codegen import CodegenError, render

        try:
            text = render(ir)
        except CodegenError as exc:
            raise DagsterMetaflowException(str(exc)) from None
        problem = dagster_load_problem(text, out_file, ir.job_name)
        if problem:
            raise DagsterMetaflowException(
                f"Dagster refused the job generated for this flow ({problem}); no file was written. "
                "This is a dagster-metaflow bug: please report it with the flow."
            )
        remote = next((s for s in ir.steps if s.remote), None)
        code_package = _save_code_package(
            obj, f"@{remote.remote} on step {remote.name!r}" if remote else None
        )
        _write_atomically(out_file, text)
        from metaflow import current

        dep = deployments.Deployment(
            name=job_name,
            flow_name=obj.flow.name,
            flow_file=os.path.realpath(sys.argv[0]),
            definitions_file=os.path.realpath(out_file),
            owner=owner,
            production_token=token,
            start_op=ir.step(ir.start_step).op_name,
            parameters=_parameter_infos(obj, ir),
            project_name=current.get("project_name"),
            branch_name=current.get("branch_name"),
            metadata=obj.metadata.metadata_str(),
            tool_version=__version__,
            flow_fingerprint=ir.flow_fingerprint or "",
            code_package=code_package,
            extra=_watch_extra(instance, prev, ir),
            automation=_automation_record(ir),
        )
        if prev is None:
            # a deployment created again after `delete`: its schedule and sensor start afresh
            # (delete left them STOPPED, and a stored state overrides default_status)
            deployments.forget_instigators(instance, dep)
        deployments.put(instance, dep)
        obj.echo(f"Wrote {out_file} ({len(ir.steps)} ops, job {job_name}).")
        obj.echo(f"Deployed as *{job_name}* in the Dagster instance at {instance.root_directory}.")
        _echo_automation(obj, ir, deployments.workspace_path(instance))
        obj.echo(f"Trigger it with:  python {os.path.basename(sys.argv[0])} dagster trigger")
        obj.echo(f"Load it with:     dagster dev -f {out_file}")
        obj.echo(f"All deployments:  dagster dev -w {deployments.workspace_path(instance)}")
    _write_attribute_file(
        deployer_attribute_file,
        {"name": job_name, "flow_name": obj.flow.name, "metadata": obj.metadata.metadata_str()},
    )


def _echo_automation(obj: Any, ir: FlowIR, workspace: str) -> None:
    auto = ir.automation
    if auto.schedule is not None:
        tz = f" ({auto.schedule.timezone})" if auto.schedule.timezone else " (UTC)"
        obj.echo(f"Schedule {ir.job_name}_schedule: cron '{auto.schedule.cron}'{tz}, running.")
    if auto.triggers:
        what = " and ".join(t.name for t in auto.triggers)
        obj.echo(f"Sensor {ir.job_name}_{'trigger_on_finish' if auto.triggers[0].kind == 'run' else 'trigger'}: "
                 f"starts a run when {what} occurred, running.")
    if auto.schedule is not None or auto.triggers:
        obj.echo(f"Schedules and sensors fire while a daemon runs:  dagster-daemon run -w {workspace}")
    if auto.exit_hooks:
        hooks = auto.exit_hooks
        obj.echo(f"Exit hooks: on success {list(hooks.on_success)}, on error {list(hooks.on_error)}.")


def _automation_record(ir: FlowIR) -> dict[str, Any]:
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
    return out


def _watch_extra(instance: Any, prev: Any, ir: FlowIR) -> dict[str, Any]:
    """Where a triggered deployment's sensor starts counting events and upstream runs: at its
    first `create` (a redeployment keeps the start)."""
    import time

    extra = dict(prev.extra) if prev is not None else {}
    if ir.automation.triggers:
        from .runtime.automation import latest_event_id

        watching = [t.name for t in ir.automation.triggers]
        if extra.get("watching") != watching:  # other events: count from now
            extra.update(watching=watching, events_after=latest_event_id(instance), created_at=time.time())
    return extra


# -- parameters -------------------------------------------------------------------------


def _config_value(info: Any, value: Any, origin: str) -> Any:
    """A parameter value as the start op's Config field expects it (JSON: text)."""
    from .values import config_value

    try:
        return config_value(info.type, value)
    except (TypeError, ValueError) as exc:
        raise DagsterMetaflowException(
            f"parameter {info.name!r} ({origin}): {value!r} is not a valid {info.type}"
        ) from exc


def _run_config(
    obj: Any,
    dep: Any,
    kwargs: dict[str, Any],
    run_params: Sequence[str],
    base: dict[str, Any] | None = None,
    use_env: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run config, explicitly given values) from typed options, --run-param name=value,
    and METAFLOW_RUN_<NAME> variables (the prefix of `flow.py run`)."""
    from metaflow import parameters as mf_parameters

    infos = {p.name: p for p in dep.parameters}
    values: dict[str, Any] = dict(base or {})
    given: dict[str, Any] = {}
    for info in dep.parameters:
        raw = kwargs.get(info.name.replace("-", "_").lower())
        if isinstance(raw, mf_parameters.DelayedEvaluationParameter):
            raw = raw(return_str=True)
        if raw is not None:
            given[info.name] = _config_value(info, raw, f"--{info.name}")
    for item in run_params:
        key, sep, text = item.partition("=")
        if not sep:
            raise DagsterMetaflowException(f"--run-param {item!r}: expected name=value")
        info = infos.get(key) or infos.get(key.replace("_", "-"))
        if info is None:
            known = ", ".join(sorted(infos)) or "none"
            raise DagsterMetaflowException(f"--run-param {key!r}: the flow has no such parameter (parameters: {known})")
        given[info.name] = _config_value(info, text, "--run-param")
    if use_env:
        for info in dep.parameters:
            var = "METAFLOW_RUN_" + info.name.upper().replace("-", "_")
            if info.name not in given and info.name not in values and var in os.environ:
                given[info.name] = _config_value(info, os.environ[var], var)
    values.update(given)
    missing = [p.name for p in dep.parameters if p.required and values.get(p.name) is None]
    if missing:
        raise DagsterMetaflowException(
            f"missing required parameter {missing[0]!r}: pass --{missing[0]} VALUE, --run-param {missing[0]}=VALUE or set METAFLOW_RUN_{missing[0].upper().replace('-', '_')}"
        )
    cfg = {k: v for k, v in values.items() if v is not None}
    run_config = {"ops": {dep.start_op: {"config": cfg}}} if dep.parameters else {}
    return run_config, given


def _start(
    obj: Any,
    instance: Any,
    dep: Any,
    run_config: dict[str, Any],
    extra_tags: dict[str, str],
    run_id_file: str | None,
    deployer_attribute_file: str | None,
    wait: bool,
    verb: str,
) -> None:
    import uuid

    from . import launch
    from .runtime.flow import TAG_PATHSPEC, metaflow_run_id

    dagster_run_id = str(uuid.uuid4())
    mf_run_id = metaflow_run_id(dagster_run_id)
    pathspec = f"{dep.flow_name}/{mf_run_id}"
    tags = {launch.TAG_DEPLOYMENT: dep.name, TAG_PATHSPEC: pathspec, **extra_tags}
    from .deployments import definitions_problem

    problem = definitions_problem(dep)
    if problem:
        raise DagsterMetaflowException(problem)
    try:
        run, queued = launch.start_run(instance, dep, run_config, tags, run_id=dagster_run_id)
    except launch.LaunchError as exc:
        raise DagsterMetaflowException(f"could not start a run of {dep.name!r}: {exc}") from None
    if run_id_file:
        with open(run_id_file, "w") as f:
            f.write(mf_run_id)
    _write_attribute_file(
        deployer_attribute_file,
        {
            "name": dep.name,
            "metadata": dep.metadata or obj.metadata.metadata_str(),
            "pathspec": pathspec,
            "dagster_run_id": run.run_id,
            "dagster_home": instance.root_directory,
        },
    )
    how = (
        "queued: dagster-daemon (running against this instance) dequeues and launches it"
        if queued
        else "launched"
    )
    obj.echo(f"Run *{pathspec}* {verb} ({how}).", bold=True)
    obj.echo(f"Dagster run {run.run_id}: {launch.ui_url(run.run_id)}")
    if wait:
        _follow(obj, instance, run.run_id, pathspec)


def _step_of(step_key: str) -> str:
    """Metaflow step of an op's step key (`op_body[2_1]` -> `body`)."""
    op = step_key.split("[", 1)[0]
    return op[3:] if op.startswith("op_") else op


def _follow(obj: Any, instance: Any, run_id: str, pathspec: str) -> None:
    """Print progress (steps done/total, tasks done, steps running) until the run ends, then
    one summary line; exit non-zero unless the run succeeded."""
    import time

    from dagster import DagsterEventType

    from . import launch
    from .runtime.worker import settle

    kinds = {
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_SUCCESS,
        DagsterEventType.STEP_FAILURE,
        DagsterEventType.STEP_SKIPPED,
    }
    total = len(list(obj.graph))
    started = time.monotonic()
    last = ""
    cursor = None
    running: set[str] = set()
    finished_steps: set[str] = set()
    tasks_done = 0
    failed: list[str] = []
    while True:
        records = instance.get_records_for_run(run_id, cursor=cursor, of_type=kinds)
        cursor = records.cursor
        for rec in records.records:
            ev = rec.event_log_entry.dagster_event
            if ev is None or ev.step_key is None or ev.step_key.startswith(("fanout_", "regroup_")):
                continue
            if ev.event_type == DagsterEventType.STEP_START:
                running.add(ev.step_key)
                continue
            running.discard(ev.step_key)
            if ev.event_type == DagsterEventType.STEP_SUCCESS:
                tasks_done += 1
                finished_steps.add(_step_of(ev.step_key))
            elif ev.event_type == DagsterEventType.STEP_SKIPPED:
                finished_steps.add(_step_of(ev.step_key))
            else:
                failed.append(ev.step_key)
        run = settle(instance, instance.get_run_by_id(run_id))
        busy = {_step_of(k) for k in running}
        done = len(finished_steps - busy)
        line = f"steps done {done}/{total}, tasks done {tasks_done}"
        if running:
            line += f", running: {', '.join(sorted(running))}"
        if failed:
            line += f", failed: {', '.join(failed)}"
        if line != last:
            obj.echo(f"[{time.monotonic() - started:6.1f}s] {line}")
            last = line
        if run is None or run.is_finished:
            break
        time.sleep(1.0)
    status = run.status.value if run is not None else "UNKNOWN"
    click.echo(f"{pathspec} {status} | Dagster run {run_id} | {launch.ui_url(run_id)}")
    if status != "SUCCESS":
        raise DagsterMetaflowException(
            f"run {pathspec} ended with status {status}; {_resume_hint(obj, pathspec.split('/')[-1])}"
        )


def _resume_hint(obj: Any, mf_run_id: str) -> str:
    return (
        "to run what did not finish: "
        f"python {os.path.basename(obj.flow.script_name)} dagster resume --origin-run-id {mf_run_id}"
    )


def _run_start_options(f: Any) -> Any:
    """Options of the commands that start a run (trigger, resume)."""
    f = click.option("--deployer-attribute-file", default=None, hidden=True, help="Used by Metaflow's Deployer API.")(f)
    f = click.option("--wait", is_flag=True, default=False, help="Follow the run until it ends.")(f)
    f = click.option("--run-id-file", default=None, help="Write the Metaflow run id to this file.")(f)
    f = click.option(
        "--run-param", "run_params", multiple=True, default=None, help="Set a parameter: name=value (repeatable)."
    )(f)
    return f


def _flow_options(cmd: Any) -> list[Any]:
    """The options Metaflow's add_custom_parameters added to `cmd` (one per Parameter)."""
    names = {o.name for o in getattr(cmd, "original_params", [])}
    return [opt for opt in cmd.params if opt.name not in names]


def _overrides_only(cmd: Any) -> Any:
    """Flow parameter options of `trigger`/`resume` default to None: only values given
    explicitly (or through --run-param / METAFLOW_RUN_<NAME>) are passed; the others keep
    the deployment's compiled defaults (trigger) or the origin run's values (resume). A
    required parameter may come from any of those, so `_run_config` checks it, not click."""
    for opt in _flow_options(cmd):
        opt.default = None
        opt.required = False
        opt.show_default = False
    return cmd


@_overrides_only
@parameters.add_custom_parameters(deploy_mode=False)
@dagster.command(help="Start a run of the deployed flow on the Dagster instance.")
@_run_start_options
@click.pass_obj
def trigger(
    obj: Any,
    run_params: Sequence[str] = (),
    run_id_file: str | None = None,
    wait: bool = False,
    deployer_attribute_file: str | None = None,
    **kwargs: Any,
) -> None:
    with _open_instance(obj) as instance:
        dep = _deployment(obj, instance)
        run_config, _ = _run_config(obj, dep, kwargs, run_params or ())
        _start(obj, instance, dep, run_config, {}, run_id_file, deployer_attribute_file, wait, "triggered")


def _origin_parameters(obj: Any, dep: Any, origin_run_id: str) -> dict[str, Any]:
    """Parameter values of a run, read from its _parameters task (Metaflow's datastore)."""
    from .runtime.flow import PARAMS_STEP

    try:
        stores = list(obj.flow_datastore.get_task_datastores(run_id=origin_run_id, steps=[PARAMS_STEP]))
    except Exception:
        stores = []
    if not stores:
        raise DagsterMetaflowException(
            f"run {dep.flow_name}/{origin_run_id} not found (no _parameters task in the datastore)"
        )
    ds = stores[0]
    values = {}
    for info in dep.parameters:
        if info.python_var_name in ds:
            values[info.name] = _config_value(info, ds[info.python_var_name], "origin run")
    return values


def _closure(obj: Any, step: str) -> list[str]:
    if step not in obj.graph:
        raise DagsterMetaflowException(f"--step-to-rerun: the flow has no step {step!r}")
    out: list[str] = []
    todo = [step]
    while todo:
        s = todo.pop()
        if s in out:
            continue
        out.append(s)
        todo.extend(obj.graph[s].out_funcs)
    return sorted(out)


@_overrides_only
@parameters.add_custom_parameters(deploy_mode=False)
@dagster.command(help="Start a new run that clones the successful tasks of an earlier run.")
@click.option("--origin-run-id", required=True, help="Metaflow run id (dagster-...) or Dagster run id to resume.")
@click.option("--step-to-rerun", default=None, help="Run this step and every step after it again.")
@_run_start_options
@click.pass_obj
def resume(
    obj: Any,
    origin_run_id: str,
    step_to_rerun: str | None = None,
    run_params: Sequence[str] = (),
    run_id_file: str | None = None,
    wait: bool = False,
    deployer_attribute_file: str | None = None,
    **kwargs: Any,
) -> None:
    from .runtime.flow import metaflow_run_id
    from .runtime.resume import TAG_ORIGIN_RUN, TAG_STEPS_TO_RERUN

    with _open_instance(obj) as instance:
        dep = _deployment(obj, instance)
        origin = origin_run_id if origin_run_id.startswith("dagster-") else metaflow_run_id(origin_run_id)
        base = _origin_parameters(obj, dep, origin)
        run_config, given = _run_config(obj, dep, kwargs, run_params or (), base=base, use_env=False)
        tags = {TAG_ORIGIN_RUN: origin}
        changed = sorted(k for k, v in given.items() if base.get(k) != v)
        if changed:
            # every task inherits the parameters from its parents: as with `flow.py resume`,
            # a task that saw other values cannot be reused, so everything runs again
            obj.echo(f"Parameters changed ({', '.join(changed)}): every step runs again.")
            step_to_rerun = obj.graph.sorted_nodes[0]
        if step_to_rerun:
            tags[TAG_STEPS_TO_RERUN] = json.dumps(_closure(obj, step_to_rerun))
        _start(obj, instance, dep, run_config, tags, run_id_file, deployer_attribute_file, wait, f"resumed from {origin}")


def _find(obj: Any, instance: Any, dep: Any, run_id: str) -> Any:
    from . import launch

    run = launch.find_run(instance, run_id, dep.name)
    if run is None or run.job_name != dep.name:  # a Dagster run id may name another job's run
        raise DagsterMetaflowException(f"no run {run_id!r} of deployment {dep.name!r} in {instance.root_directory}")
    return run


@dagster.command(help="Show the status of a run (Metaflow run id or Dagster run id).")
@click.option("--run-id", required=True, help="dagster-... (Metaflow) or a Dagster run id.")
@click.pass_obj
def status(obj: Any, run_id: str) -> None:
    from . import launch
    from .runtime.flow import metaflow_run_id

    with _open_instance(obj) as instance:
        dep = _known_deployment(obj, instance)
        run = _find(obj, instance, dep, run_id)
        click.echo(
            f"{dep.flow_name}/{metaflow_run_id(run.run_id)}: {launch.status_name(run)} "
            f"(Dagster {run.status.value}, run {run.run_id}) {launch.ui_url(run.run_id)}"
        )
        if run.status.value in ("FAILURE", "CANCELED"):
            obj.echo(_resume_hint(obj, metaflow_run_id(run.run_id)))


@dagster.command(help="Stop a run and every step process it started.")
@click.option("--run-id", required=True, help="dagster-... (Metaflow) or a Dagster run id.")
@click.option("--authorize", default=None, help="Authorize with the deployment's production token.")
@click.pass_obj
def terminate(obj: Any, run_id: str, authorize: str | None = None) -> None:
    from . import launch

    with _open_instance(obj) as instance:
        dep = _known_deployment(obj, instance)
        _check_authorized(obj, dep, authorize, _token_prefix(obj, dep.name), "terminate")
        run = _find(obj, instance, dep, run_id)
        if run.is_finished:
            obj.echo(f"Run {run.run_id} already ended ({run.status.value}); nothing to terminate.")
            return
        if launch.terminate(instance, run.run_id):
            obj.echo(f"Run {run.run_id} terminated.", bold=True)
        else:
            raise DagsterMetaflowException(f"run {run.run_id} did not stop within 15 s")


@dagster.command("list-runs", help="List the runs of this deployment, newest first.")
@click.option("--running", "states", flag_value="STARTED", multiple=True, help="Only running runs.")
@click.option("--succeeded", "states", flag_value="SUCCESS", multiple=True, help="Only successful runs.")
@click.option("--failed", "states", flag_value="FAILURE", multiple=True, help="Only failed runs.")
@click.pass_obj
def list_runs(obj: Any, states: Sequence[str] = ()) -> None:
    from . import launch
    from .runtime.flow import metaflow_run_id

    with _open_instance(obj) as instance:
        dep = _known_deployment(obj, instance)
        runs = launch.list_runs(instance, dep.name, list(states or ()))
        if not runs:
            obj.echo(f"No runs of {dep.name}.")
        for run in runs:
            click.echo(
                f"{dep.flow_name}/{metaflow_run_id(run.run_id)}  {run.status.value:<10} {run.run_id}"
            )


@dagster.command(help="Show the deployment: job, files, schedule, sensor and exit hooks.")
@click.pass_obj
def describe(obj: Any) -> None:
    from . import deployments

    with _open_instance(obj) as instance:
        dep = _deployment(obj, instance)
        auto = dep.automation or {}
        states = deployments.instigator_status(instance, dep)
        lines = [
            f"Deployment {dep.name} (flow {dep.flow_name}, by {dep.owner})",
            f"  definitions: {dep.definitions_file}",
            f"  flow file:   {dep.flow_file}",
        ]
        sched = auto.get("schedule")
        if sched:
            tz = sched.get("timezone") or "UTC"
            lines.append(f"  schedule:    {sched['name']} cron '{sched['cron']}' ({tz}): {states.get(sched['name'])}")
        if auto.get("sensor"):
            what = " and ".join(auto.get("triggers", []))
            lines.append(f"  sensor:      {auto['sensor']} (@{auto.get('trigger_kind')} {what}): {states.get(auto['sensor'])}")
        hooks = auto.get("exit_hooks")
        if hooks:
            lines.append(f"  exit hooks:  on success {hooks['on_success']}, on error {hooks['on_error']}")
        if not (sched or auto.get("sensor")):
            lines.append("  not scheduled or triggered: runs start with `trigger`, the Deployer or the UI")
        for line in lines:
            click.echo(line)


@dagster.command(help="Remove the deployment from the Dagster instance (runs are kept; runs in progress go on).")
@click.option("--authorize", default=None, help="Authorize with the deployment's production token.")
@click.pass_obj
def delete(obj: Any, authorize: str | None = None) -> None:
    from . import deployments, launch

    with _open_instance(obj) as instance:
        dep = _deployment(obj, instance, corrupt_ok=True)
        _check_authorized(obj, dep, authorize, _token_prefix(obj, dep.name), "delete")
        # as `argo-workflows delete`: runs in progress are not stopped, and stay reachable
        # by `status`/`terminate`/`list-runs` (runs are found by job name)
        active = launch.list_runs(instance, dep.name, IN_PROGRESS)
        stopped = deployments.remove(instance, dep.name)
        obj.echo(f"Deleted deployment *{dep.name}*; its runs stay in the instance.", bold=True)
        if active:
            from .runtime.flow import metaflow_run_id

            script = os.path.basename(sys.argv[0])
            ids = ", ".join(metaflow_run_id(r.run_id) for r in active)
            obj.echo(
                f"{len(active)} run(s) still in progress go on: {ids}; "
                f"`python {script} dagster status --run-id ID` and `terminate --run-id ID` still reach them."
            )
        if stopped:
            obj.echo(f"Stopped {', '.join(stopped)} and removed the deployment from the daemon's workspace.")
        if dep.definitions_file:
            obj.echo(f"The definitions file {dep.definitions_file} was left in place.")


@dagster.command(
    "launch-step",
    hidden=True,
    help="Internal: launch one task as Metaflow's runtime does (@kubernetes, @batch, @conda, @pypi).",
)
@click.argument("step_name")
@click.option("--run-id", required=True)
@click.option("--task-id", required=True)
@click.option("--input-paths", required=True, help="Compressed, as `flow.py step` takes them.")
@click.option("--retry-count", default=0, type=int)
@click.option("--max-user-code-retries", default=0, type=int)
@click.option("--split-index", default=None, type=int)
@click.option("--ubf-context", default=None)
@click.option("--clone-run-id", default=None)
@click.option("--tag", "tags", multiple=True)
@click.option("--namespace", "task_namespace", default=None)
@click.option("--launcher", default="runtime", help="The decorator that launches the task (for messages).")
@click.option("--package-url", default=None)
@click.option("--package-sha", default=None)
@click.option("--package-metadata", default=None)
@click.option("--dry-run", is_flag=True, default=False, help="Print the task's command as JSON instead.")
@click.pass_context
def launch_step(
    ctx: Any,
    step_name: str,
    run_id: str,
    task_id: str,
    input_paths: str,
    retry_count: int = 0,
    max_user_code_retries: int = 0,
    split_index: int | None = None,
    ubf_context: str | None = None,
    clone_run_id: str | None = None,
    tags: Sequence[str] = (),
    task_namespace: str | None = None,
    launcher: str = "runtime",
    package_url: str | None = None,
    package_sha: str | None = None,
    package_metadata: str | None = None,
    dry_run: bool = False,
) -> None:
    """Run by the op of such a step (runtime/flow.py): Metaflow's CLI has loaded the flow and
    initialised its decorators; build the task's command with their runtime hooks, run it."""
    from metaflow import namespace
    from metaflow.util import decompress_list

    from .runtime import native
    from .step_decorators import REMOTE_COMPUTE_DECORATORS
    from .task_options import TaskOptions

    obj = ctx.obj
    if task_namespace is not None:
        namespace(task_namespace or None)
    spec = TaskOptions(
        step=step_name,
        run_id=run_id,
        task_id=task_id,
        input_paths=tuple(decompress_list(input_paths)),
        retry_count=retry_count,
        max_user_code_retries=max_user_code_retries,
        split_index=split_index,
        ubf_context=ubf_context,
        tags=tuple(tags),
        clone_run_id=clone_run_id,
    )
    try:
        native.init_step_environment(obj, step_name)
        if package_url and package_sha:
            package: Any = native.DeployedPackage(
                obj.flow_datastore, package_url, package_sha, package_metadata or ""
            )
        else:  # no package was saved at create: package the code, as `flow.py run` does
            package = native.PackageOnDemand(obj)
        config_file = ctx.find_root().params.get("local_config_file")
        argv, env, decos = native.step_command(obj, spec, package, config_file)
    except Exception as exc:
        click.echo(native.LAUNCH_ERROR_PREFIX + native.launch_error(step_name, launcher, exc), err=True)
        sys.exit(1)
    if dry_run:
        click.echo(json.dumps({"argv": argv, "env": env}))
        return
    code = native.run_task(step_name, argv, native.task_environment(env), decos)
    if launcher in REMOTE_COMPUTE_DECORATORS:
        native.record_dagster_metadata(obj, spec)
    sys.exit(code)


def _top_level_args(obj: Any) -> tuple[str, ...]:
    from metaflow.decorators import flow_decorators
    from metaflow.util import dict_to_cli_options

    opts: dict[str, Any] = {}
    for deco in flow_decorators(obj.flow):
        opts.update(deco.get_top_level_options())
    return tuple(dict_to_cli_options(opts)) + (
        "--quiet",
        f"--metadata={obj.metadata.TYPE}",
        f"--environment={obj.environment.TYPE}",
        "--event-logger=nullSidecarLogger",
        "--monitor=nullSidecarMonitor",
        "--no-pylint",
    )


def _executor_config(executor: str, text: str | None) -> dict[str, Any]:
    """`--executor-config`: a JSON object the executor's own config schema accepts (checked
    here, against the installed integration package, so a typo fails at create)."""
    from .codegen import ENGINE_EXECUTORS

    engine = ENGINE_EXECUTORS.get(executor)
    if engine is None:
        if text:
            raise DagsterMetaflowException(
                f"--executor-config is for --executor {'/'.join(ENGINE_EXECUTORS)}, not {executor}"
            )
        return {}
    module, name = engine
    try:
        executor_def = getattr(importlib.import_module(module), name)
    except ImportError:  # each engine has the extra of its name
        raise DagsterMetaflowException(
            f"--executor {executor} needs the {module.replace('_', '-')} package: "
            f"pip install 'dagster-metaflow[{executor}]'"
        ) from None
    try:
        config = json.loads(text) if text else {}
    except ValueError as exc:
        raise DagsterMetaflowException(f"--executor-config is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise DagsterMetaflowException("--executor-config must be a JSON object")
    from .runtime.engines import executor_with_defaults

    try:
        executor_with_defaults(executor_def, config)
    except Exception as exc:
        raise DagsterMetaflowException(f"--executor-config: {str(exc).splitlines()[0]}") from None
    return config


def build_ir_from_obj(
    obj: Any,
    *,
    out_file: str,
    job_name: str,
    tags: Sequence[str],
    namespace: str | None,
    with_decorators: Sequence[str],
    workflow_timeout: int | None,
    max_workers: int,
    executor: str = "threads",
    executor_config: Mapping[str, Any] | None = None,
    owner: str | None = None,
    production_token: str | None = None,
) -> FlowIR:
    """Collect everything `create` needs from Metaflow's CLI state into a FlowIR."""
    from metaflow import decorators
    from metaflow.tagging_util import validate_tags

    from .ir import (
        REMOTE_DATASTORES,
        CompileOptions,
        IRError,
        build_flow_ir,
        remote_datastore_refusal,
    )

    for spec in with_decorators:
        deco = spec.split(":")[0]
        if deco in REMOTE_DATASTORES and obj.flow_datastore.TYPE not in REMOTE_DATASTORES[deco]:
            # (Metaflow's own check, in the decorator's step_init, would name no step)
            raise DagsterMetaflowException(remote_datastore_refusal(deco, "given with --with"))
    if with_decorators:
        decorators._attach_decorators(obj.flow, list(with_decorators))
        decorators._init_step_decorators(
            obj.flow, obj.graph, obj.environment, obj.flow_datastore, obj.logger
        )
    validate_tags(list(tags))
    flow_file = os.path.realpath(sys.argv[0])
    out_dir = os.path.dirname(os.path.realpath(out_file))
    try:
        rel = os.path.relpath(flow_file, out_dir)
        flow_ref = rel if not rel.startswith("..") else flow_file
    except ValueError:
        flow_ref = flow_file
    baked = baked_environment(dict(os.environ))
    argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]]
    from metaflow.user_configs.config_parameters import dump_config_values

    dumped = dump_config_values(obj.flow)
    config_values = json.dumps(dumped, sort_keys=True) if dumped else None
    from .runtime.package import file_fingerprint

    fingerprint = file_fingerprint(flow_file)
    options = CompileOptions(
        job_name=job_name,
        flow_file=flow_ref,
        tags=tuple(tags),
        namespace=namespace,
        max_workers=max_workers,
        workflow_timeout=workflow_timeout,
        top_level_args=_top_level_args(obj),
        environment=baked,
        regenerate_command="python " + " ".join(shlex.quote(a) for a in argv),
        tool_version=__version__,
        output_name=os.path.basename(out_file),
        datastore_type=obj.flow_datastore.TYPE,
        datastore_root=obj.flow_datastore.datastore_root,
        executor=executor,
        executor_config=dict(executor_config or {}),
        owner=owner,
        production_token=production_token,
        config_values=config_values,
        flow_fingerprint=fingerprint,
    )
    try:
        return build_flow_ir(obj.flow, obj.graph, options)
    except IRError as exc:
        raise DagsterMetaflowException(str(exc)) from None


def _save_code_package(obj: Any, required_by: str | None = None) -> dict[str, str]:
    """Metaflow's code package of the flow (flow file, modules beside it with
    --package-suffixes), saved in the flow's datastore as Metaflow's schedulers do: a
    deployment runs the code it was compiled from. Kept in the deployment record, not in
    the generated file (a package carries its creation time; the file stays deterministic).
    Empty, with a warning, where Metaflow cannot package the code, unless a remote step
    needs it (`required_by`): then `create` stops with the reason."""
    from metaflow.package import MetaflowPackage

    obj.echo("Packaging the flow's code...")
    try:
        pkg = MetaflowPackage(obj.flow, obj.environment, obj.echo, suffixes=obj.package_suffixes)
        url, sha = obj.flow_datastore.save_data([pkg.blob], len_hint=1)[0]
    except Exception as exc:
        why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if required_by:
            raise DagsterMetaflowException(
                f"{required_by} needs the flow's code package in the datastore, which could not "
                f"be saved ({why}); no file was written"
            ) from None
        obj.echo(
            f"Warning: could not package the flow's code ({why}); runs will refuse to start "
            "if the flow file changes before the next `create`.",
            err=True,
        )
        return {}
    return {"url": str(url), "sha": str(sha), "metadata": str(pkg.package_metadata)}


def dagster_load_problem(text: str, out_file: str, job_name: str) -> str | None:
    """Build the generated definitions in memory, as `dagster dev` would; None if Dagster
    accepts them, else Dagster's one-line complaint. A refused shape must fail at create,
    never as a stack trace when Dagster loads the file."""
    import types

    name = "dagster_metaflow_generated_check"
    module = types.ModuleType(name)
    module.__file__ = os.path.abspath(out_file)
    sys.modules[name] = module  # Dagster resolves annotations through the module
    try:
        exec(compile(text, module.__file__, "exec", dont_inherit=True), module.__dict__)
        module.__dict__["defs"].resolve_job_def(job_name)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}"
    finally:
        sys.modules.pop(name, None)
    return None


