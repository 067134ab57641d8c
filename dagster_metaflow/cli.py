"""`python flow.py dagster ...`: the Metaflow CLI group of dagster-metaflow. Commands only:
compiling is `compiler`, runs are started and followed by `runs`, tokens are `tokens`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from metaflow import parameters
from metaflow._vendor import click

from . import compiler
from .deploy import deployment_error as _deployment_error
from .errors import DagsterMetaflowException
from .errors import IncorrectProductionToken as IncorrectProductionToken  # re-exported
from .runtime.heap import defer_collection, exit_without_collecting, resume_collection
from .runtime.task_cli import task_options_cli

if TYPE_CHECKING:
    from .runs import Caller

# Metaflow imports this module for every command it runs (each step included), so the
# compiler (Jinja2, IR), Dagster and the run machinery are imported only inside the
# commands that use them.

# Dagster run statuses of a run that has not ended
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
EXECUTORS = ("threads", "multiprocess", "forkserver", "in_process", "celery", "k8s")
IDENTITIES = ("production", "user")
# commands that do not deploy this file's code: they act on runs and records, or start a run
# of the deployed code package (trigger, resume). No flow validation (graph lint, pylint:
# ~1.2 s when pylint is installed) before them; `create` validates what it deploys.
UNVALIDATED_COMMANDS = frozenset(
    {"status", "list-runs", "describe", "terminate", "delete", "trigger", "resume"}
)


@click.group()
def cli() -> None:
    pass


@cli.group(
    help="Compile this flow to a Dagster job, deploy it to a Dagster instance and operate it."
)
@click.option(
    "--name",
    default=None,
    help="Deployment (= Dagster job) name; default: the flow name, or P_<branch>_<Flow> with @project.",
)
@click.pass_context
def dagster(ctx: Any, name: str | None = None) -> None:
    obj = ctx.obj
    if ctx.invoked_subcommand not in UNVALIDATED_COMMANDS:
        obj.check(obj.graph, obj.flow, obj.environment, pylint=obj.pylint)
    # importing Dagster and opening its instance: no collector runs (runtime/heap.py)
    defer_collection()
    ctx.call_on_close(resume_collection)  # a caller that invoked the CLI in-process
    obj.dagster_name = name
    exit_without_collecting()
    # every subcommand needs Dagster: refuse an untested one here, in one line, rather than
    # as a "Dagster refused the job" at create or a traceback later
    try:
        from . import _dagster_private  # noqa: F401
    except ImportError as exc:
        raise DagsterMetaflowException(str(exc)) from None


def _resolve_job_name(obj: Any, name: str | None) -> str:
    """The deployment this command acts on: `--name`, else named after the flow."""
    from metaflow import current

    name = name or getattr(obj, "dagster_name", None)
    project_flow = (
        current.get("project_flow_name") if "project" in obj.flow._flow_decorators else None
    )
    return compiler.resolve_job_name(name, obj.flow.name, project_flow)


def _open_instance(obj: Any, may_create: bool = False) -> Any:
    """The deployments' Dagster instance. Only a deploying command (`may_create`) may make a
    new one: any other command refuses a DAGSTER_HOME that does not exist, which would be an
    empty instance (a typo), in one line. A relative DAGSTER_HOME is refused as Dagster does."""
    from ._dagster_sqlite import keep_sqlite_connections, remember_alembic_heads
    from .deployments import dagster_home, open_instance

    given = os.environ.get("DAGSTER_HOME")
    if given and not os.path.isabs(os.path.expanduser(given)):
        raise DagsterMetaflowException(
            f"DAGSTER_HOME={given!r} must be an absolute path (as Dagster requires)"
        )
    home, chosen = dagster_home()
    if not may_create and not os.path.isdir(home):
        raise DagsterMetaflowException(
            f"no Dagster instance at {home} (DAGSTER_HOME{' is not set' if chosen else ''}): "
            "nothing was deployed there; check DAGSTER_HOME, or deploy with `dagster create`"
        )
    if chosen and not getattr(obj, "_home_announced", False):
        obj.echo(
            f"DAGSTER_HOME is not set: using the dagster-metaflow instance at {home} "
            "(export DAGSTER_HOME to use another one).",
            err=True,
        )
        obj._home_announced = True
    remember_alembic_heads()
    keep_sqlite_connections()
    return open_instance(home)


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
        obj.echo(
            f"Deployment {name!r} is not in the instance (deleted?): looking for runs of job {name}.",
            err=True,
        )
        dep = deleted(instance, name) or Deployment(name, obj.flow.name, "", "", "", "")
    return replace(dep, flow_name=dep.flow_name or obj.flow.name)


def _positive(ctx: Any, param: Any, value: int | None) -> int | None:
    # a plain int option with a check: Metaflow's Runner/Deployer API knows no IntRange
    if value is not None and value < 1:
        raise click.BadParameter(f"{value} is not >= 1")
    return value


@dagster.command(
    help="Compile this flow into a Dagster definitions file and record the deployment."
)
@click.argument("file", required=False, default=None)
@click.option("--name", default=None, help="Dagster job name (same as `dagster --name`).")
@click.option(
    "--tag", "tags", multiple=True, default=None, help="Metaflow tag for every run (repeatable)."
)
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
    "--workflow-priority",
    default=None,
    type=int,
    help="Priority of the runs (Dagster's dagster/priority: with a QueuedRunCoordinator, "
    "higher starts first).",
)
@click.option("--workflow-title", default=None, help="Title of the job, shown in the Dagster UI.")
@click.option(
    "--workflow-description",
    default=None,
    help="Description of the job in the Dagster UI; default: the flow's docstring.",
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
    'a launch may override in run config, e.g. \'{"broker": "redis://host:6379/0"}\' '
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
@click.option(
    "--authorize", default=None, help="Authorize this deployment with a production token."
)
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
@click.option(
    "--asset",
    "assets",
    multiple=True,
    help="Declare this end-step artifact as a Dagster asset (repeatable); the flow itself "
    "is always one.",
)
@click.option(
    "--asset-automation",
    is_flag=True,
    default=False,
    help="Start on @trigger_on_finish through Dagster's AutomationCondition on the assets "
    "instead of a sensor.",
)
@click.option(
    "--only-json",
    is_flag=True,
    default=False,
    help="Print what would be deployed (job, file, the definitions' text) as JSON; write and "
    "record nothing (as argo-workflows create --only-json, the code package is saved).",
)
@click.option(
    "--auto-emit-events/--no-auto-emit-events",
    default=True,
    show_default=True,
    help="Publish the event metaflow.<Flow>.end when a run succeeds (as Argo's "
    "--auto-emit-argo-events), so other deployments' @trigger can start on it.",
)
@click.option(
    "--notify-on-error/--no-notify-on-error",
    default=False,
    show_default=True,
    help="Notify the services below when a run fails.",
)
@click.option(
    "--notify-on-success/--no-notify-on-success",
    default=False,
    show_default=True,
    help="Notify the services below when a run succeeds.",
)
@click.option(
    "--notify-slack-webhook-url",
    default=None,
    help="Slack incoming webhook URL for run notifications (or env:NAME).",
)
@click.option(
    "--notify-pager-duty-integration-key",
    default=None,
    help="PagerDuty Events API v2 integration key for run notifications (or env:NAME).",
)
@click.option(
    "--notify-incident-io-api-key",
    default=None,
    help="incident.io API key for run notifications (or env:NAME).",
)
@click.option(
    "--incident-io-alert-source-config-id",
    default=None,
    help="incident.io alert source config id, e.g. 01GW2G3V0S59R238FAHPDS1R66.",
)
@click.option(
    "--incident-io-metadata",
    multiple=True,
    help="Custom metadata of incident.io alerts, Key=Value (repeatable).",
)
@click.option(
    "--deployer-attribute-file", default=None, hidden=True, help="Used by Metaflow's Deployer API."
)
@click.pass_obj
def create(
    obj: Any,
    file: str | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    user_namespace: str | None = None,
    with_decorators: Sequence[str] = (),
    workflow_timeout: int | None = None,
    workflow_priority: int | None = None,
    workflow_title: str | None = None,
    workflow_description: str | None = None,
    max_workers: int = 16,
    executor: str = "threads",
    executor_config: str | None = None,
    identity: str = "production",
    authorize: str | None = None,
    generate_new_token: bool = False,
    given_token: str | None = None,
    force: bool = False,
    assets: Sequence[str] = (),
    asset_automation: bool = False,
    only_json: bool = False,
    auto_emit_events: bool = True,
    deployer_attribute_file: str | None = None,
    **notify: Any,  # the --notify-*/--incident-io-* options, named as Argo names them
) -> None:
    """Compile, write the file, record the deployment (`deploy.deploy`, shared with the dg
    component's `compile-component`); with --only-json, print what it would deploy."""
    from .deploy import DeployRequest, deploy, preview
    from .notifications import notifications_from_options
    from .runs import write_attribute_file
    from .tokens import TokenOptions

    notifications = notifications_from_options(
        **{key.removeprefix("notify_"): value for key, value in notify.items()}
    )
    job_name = _resolve_job_name(obj, name)
    request = DeployRequest(
        job_name=job_name,
        out_file=file or f"{job_name.lower()}_dagster.py",
        force=force,
        tokens=TokenOptions(authorize, given_token, generate_new_token, identity),
        options=dict(
            tags=tuple(tags or ()),
            namespace=user_namespace,
            with_decorators=tuple(with_decorators or ()),
            workflow_timeout=workflow_timeout,
            workflow_priority=workflow_priority,
            workflow_title=workflow_title,
            workflow_description=workflow_description,
            max_workers=max_workers,
            executor=executor,
            executor_config=executor_config,
            assets=tuple(assets or ()),
            asset_automation=asset_automation,
            notifications=notifications,
            auto_emit_events=auto_emit_events,
        ),
    )
    attributes = {"name": job_name, "flow_name": obj.flow.name}
    if only_json:
        shown = preview(obj, request, lambda: _open_instance(obj))
        click.echo(json.dumps(shown, indent=2))
        # the Deployer's DeployedFlow.definitions (as Argo's .workflow_template)
        attributes.update(metadata=None, additional_info={"definitions": shown})
        write_attribute_file(deployer_attribute_file, attributes)
        return
    deploy(obj, request, lambda: _open_instance(obj, may_create=True))
    _secrets_note(obj, request.out_file, notifications)
    attributes["metadata"] = obj.metadata.metadata_str()
    write_attribute_file(deployer_attribute_file, attributes)


def _secrets_note(obj: Any, out_file: str, notifications: Any) -> None:
    """Say that a secret given as is went into the file (`env:NAME` keeps it out)."""
    from .notifications import SECRET_NAMES

    written = [SECRET_NAMES[s] for s in (notifications.literal_secrets if notifications else ())]
    if written:
        obj.echo(
            f"Note: the {', '.join(written)} {'is' if len(written) == 1 else 'are'} written "
            f"into {out_file}; pass env:NAME to read it from the environment when sending."
        )


def _drift_notice(obj: Any, dep: Any) -> None:
    """One line when the flow file differs from the one the deployment was compiled from:
    the run runs the deployment's code package, not the edits (a fix needs `create`)."""
    from .runtime.package import file_fingerprint

    script = obj.flow.script_name
    deployed_from = os.path.realpath(dep.flow_file) if dep.flow_file else None
    if deployed_from and deployed_from != os.path.realpath(sys.argv[0]):
        # another file (same flow name and job name) replaced this file's deployment
        obj.echo(
            f"Deployment {dep.name} was created from {dep.flow_file}, not {script}: this run "
            f"runs that file's code (to deploy {script}: python {script} dagster create).",
            err=True,
        )
        return
    try:
        changed = (
            bool(dep.flow_fingerprint) and file_fingerprint(sys.argv[0]) != dep.flow_fingerprint
        )
    except OSError:
        return
    if changed:
        obj.echo(
            f"{script} has changed since it was deployed: this run runs the deployed code, "
            f"not your edits (to deploy them: python {script} dagster create).",
            err=True,
        )


def _caller(obj: Any) -> Caller:
    """What starting and following a run needs from the loaded flow."""
    from .runs import Caller

    total = len(list(obj.graph))
    return Caller(
        echo=obj.echo,
        script=obj.flow.script_name,
        total_steps=total,
        metadata=obj.metadata.metadata_str(),
    )


def _run_start_options(f: Any) -> Any:
    """Options of the commands that start a run (trigger, resume)."""
    f = click.option(
        "--deployer-attribute-file",
        default=None,
        hidden=True,
        help="Used by Metaflow's Deployer API.",
    )(f)
    f = click.option("--wait", is_flag=True, default=False, help="Follow the run until it ends.")(f)
    f = click.option("--run-id-file", default=None, help="Write the Metaflow run id to this file.")(
        f
    )
    f = click.option(
        "--run-param",
        "run_params",
        multiple=True,
        default=None,
        help="Set a parameter: name=value (repeatable).",
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
    required parameter may come from any of those, so `values.run_config` checks it, not click."""
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
    from . import runs, values

    with _open_instance(obj) as instance:
        dep = _deployment(obj, instance)
        run_config, _ = values.run_config(dep, kwargs, run_params or ())
        request = runs.RunRequest(
            run_config, {}, "triggered", run_id_file, deployer_attribute_file, wait
        )
        _drift_notice(obj, dep)
        runs.start(instance, dep, request, _caller(obj))


@_overrides_only
@parameters.add_custom_parameters(deploy_mode=False)
@dagster.command(help="Start a new run that clones the successful tasks of an earlier run.")
@click.option(
    "--origin-run-id",
    required=True,
    help="Metaflow run id (dagster-...) or Dagster run id to resume.",
)
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
    from . import runs, values
    from .runtime.ids import metaflow_run_id
    from .runtime.resume import TAG_ORIGIN_RUN, TAG_STEPS_TO_RERUN

    with _open_instance(obj) as instance:
        dep = _deployment(obj, instance)
        origin = (
            origin_run_id
            if origin_run_id.startswith("dagster-")
            else metaflow_run_id(origin_run_id)
        )
        base = values.origin_parameters(obj.flow_datastore, dep, origin)
        run_config, given = values.run_config(
            dep, kwargs, run_params or (), base=base, use_env=False
        )
        tags = {TAG_ORIGIN_RUN: origin}
        changed = sorted(k for k, v in given.items() if base.get(k) != v)
        if changed:
            # every task inherits the parameters from its parents: as with `flow.py resume`,
            # a task that saw other values cannot be reused, so everything runs again
            obj.echo(f"Parameters changed ({', '.join(changed)}): every step runs again.")
            step_to_rerun = obj.graph.sorted_nodes[0]
        if step_to_rerun:
            tags[TAG_STEPS_TO_RERUN] = json.dumps(runs.rerun_steps(obj.graph, step_to_rerun))
        request = runs.RunRequest(
            run_config, tags, f"resumed from {origin}", run_id_file, deployer_attribute_file, wait
        )
        _drift_notice(obj, dep)
        runs.start(instance, dep, request, _caller(obj))


def _find(obj: Any, instance: Any, dep: Any, run_id: str) -> Any:
    """A run of this deployment, by Metaflow or Dagster run id."""
    from . import runs

    run = runs.find_run(instance, run_id, dep.name)
    if run is None or not runs.of_deployment(run, dep.name):  # an id may name another's run
        raise DagsterMetaflowException(
            f"no run {run_id!r} of deployment {dep.name!r} in {instance.root_directory}"
        )
    return run


@dagster.command(help="Show the status of a run (Metaflow run id or Dagster run id).")
@click.option("--run-id", required=True, help="dagster-... (Metaflow) or a Dagster run id.")
@click.pass_obj
def status(obj: Any, run_id: str) -> None:
    from . import runs
    from .runtime.ids import metaflow_run_id

    with _open_instance(obj) as instance:
        dep = _known_deployment(obj, instance)
        run = _find(obj, instance, dep, run_id)
        click.echo(
            f"{dep.flow_name}/{metaflow_run_id(run.run_id)}: {runs.status_name(run)} "
            f"(Dagster {run.status.value}, run {run.run_id}) {runs.where_to_see(instance, run.run_id)}"
        )
        if run.status.value in ("FAILURE", "CANCELED"):
            error = runs.error_of(run)
            if error:
                obj.echo(f"Error: {error}")
            obj.echo(runs.resume_hint(obj.flow.script_name, metaflow_run_id(run.run_id)))


@dagster.command(help="Stop a run and every step process it started.")
@click.option("--run-id", required=True, help="dagster-... (Metaflow) or a Dagster run id.")
@click.option("--authorize", default=None, help="Authorize with the deployment's production token.")
@click.pass_obj
def terminate(obj: Any, run_id: str, authorize: str | None = None) -> None:
    from . import runs
    from .runtime.ids import metaflow_run_id
    from .tokens import check_authorized

    with _open_instance(obj) as instance:
        dep = _known_deployment(obj, instance)
        check_authorized(dep, authorize, "terminate")
        run = _find(obj, instance, dep, run_id)
        pathspec = f"{dep.flow_name}/{metaflow_run_id(run.run_id)} (Dagster run {run.run_id})"
        if run.is_finished:
            obj.echo(
                f"Run {pathspec} already ended ({runs.status_name(run)}); nothing to terminate."
            )
            return
        if runs.terminate(instance, run.run_id):
            obj.echo(f"Run {pathspec} terminated.", bold=True)
        else:
            raise DagsterMetaflowException(f"run {pathspec} did not stop within 15 s")


@dagster.command("list-runs", help="List the runs of this deployment, newest first.")
@click.option("--running", "states", flag_value="STARTED", multiple=True, help="Only running runs.")
@click.option(
    "--succeeded", "states", flag_value="SUCCESS", multiple=True, help="Only successful runs."
)
@click.option("--failed", "states", flag_value="FAILURE", multiple=True, help="Only failed runs.")
@click.option(
    "--aborted", "states", flag_value="CANCELED", multiple=True, help="Only terminated runs."
)
@click.option(
    "--timed-out",
    "states",
    flag_value="TIMED_OUT",
    multiple=True,
    help="Only runs stopped by their --workflow-timeout.",
)
@click.pass_obj
def list_runs(obj: Any, states: Sequence[str] = ()) -> None:
    from . import runs

    with _open_instance(obj) as instance:
        dep = _known_deployment(obj, instance)
        found = runs.list_runs(instance, dep.name, list(states or ()))
        if not found:
            which = " or ".join(
                sorted({runs.STATUS_NAMES.get(s, s).replace("_", "-") for s in states or ()})
            )
            obj.echo(f"No {which + ' ' if which else ''}runs of {dep.name}.")
            return
        click.echo(runs.RUN_LINE_HEADER)
        for run in found:
            click.echo(runs.run_line(instance, dep.flow_name, run))


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
            lines.append(
                f"  schedule:    {sched['name']} cron '{sched['cron']}' ({tz}): {states.get(sched['name'])}"
            )
        if auto.get("sensor"):
            what = " and ".join(auto.get("triggers", []))
            lines.append(
                f"  sensor:      {auto['sensor']} (@{auto.get('trigger_kind')} {what}): {states.get(auto['sensor'])}"
            )
        hooks = auto.get("exit_hooks")
        if hooks:
            lines.append(
                f"  exit hooks:  on success {hooks['on_success']}, on error {hooks['on_error']}"
            )
        notify = auto.get("notifications")
        if notify:
            from .notifications import SERVICE_NAMES

            whom = ", ".join(SERVICE_NAMES.get(s, s) for s in notify["services"])
            sensors = ", ".join(f"{s}: {states.get(s)}" for s in notify["sensors"])
            lines.append(f"  notify:      on {' and '.join(notify['on'])}: {whom} ({sensors})")
        if auto.get("events_out"):
            names = " and ".join(auto["events_out"])
            lines.append(f"  events out:  {names} when a run succeeds (publish_event)")
        if not (sched or auto.get("sensor")):
            lines.append(
                "  not scheduled or triggered: runs start with `trigger`, the Deployer or the UI"
            )
        for line in lines:
            click.echo(line)


@dagster.command(
    help="Remove the deployment from the Dagster instance (runs are kept; runs in progress go on)."
)
@click.option("--authorize", default=None, help="Authorize with the deployment's production token.")
@click.pass_obj
def delete(obj: Any, authorize: str | None = None) -> None:
    from . import deployments, runs
    from .tokens import check_authorized

    with _open_instance(obj) as instance:
        dep = _deployment(obj, instance, corrupt_ok=True)
        check_authorized(dep, authorize, "delete")
        # as `argo-workflows delete`: runs in progress are not stopped, and stay reachable
        # by `status`/`terminate`/`list-runs` (runs are found by job name)
        active = runs.list_runs(instance, dep.name, IN_PROGRESS)
        stopped = deployments.remove(instance, dep.name)
        obj.echo(f"Deleted deployment *{dep.name}*; its runs stay in the instance.", bold=True)
        if active:
            from .runtime.ids import metaflow_run_id

            script = os.path.basename(sys.argv[0])
            ids = ", ".join(metaflow_run_id(r.run_id) for r in active)
            obj.echo(
                f"{len(active)} run(s) still in progress go on: {ids}; "
                f"`python {script} dagster status --run-id ID` and `terminate --run-id ID` still reach them."
            )
        if stopped:
            obj.echo(
                f"Stopped {', '.join(stopped)} and removed the deployment from the daemon's workspace."
            )
        if dep.definitions_file:
            obj.echo(f"The definitions file {dep.definitions_file} was left in place.")


@dagster.command(
    "launch-step",
    hidden=True,
    help="Internal: launch one task as Metaflow's runtime does (@kubernetes, @batch, @conda, @pypi).",
)
@task_options_cli
@click.option(
    "--dry-run", is_flag=True, default=False, help="Print the task's command as JSON instead."
)
@click.pass_context
def launch_step(ctx: Any, dry_run: bool = False, **options: Any) -> None:
    """Run by the op of such a step (runtime/attempt.py): Metaflow's CLI has loaded the flow and
    initialised its decorators; build the task's command with their runtime hooks, run it.
    Its options are TaskOptions' own, as the op wrote them (`TaskOptions.cli_args`)."""
    from metaflow import namespace

    from .runtime import native
    from .step_decorators import REMOTE_COMPUTE_DECORATORS
    from .task_options import TaskOptions

    resume_collection()  # environments to solve and build, then a task that may run for hours
    obj = ctx.obj
    spec = TaskOptions.from_cli(**options)
    launcher = spec.launcher or "runtime"  # for messages
    if spec.namespace is not None:
        namespace(spec.namespace or None)
    try:
        native.init_step_environment(obj, spec.step)
        if spec.package_url and spec.package_sha:
            package: Any = native.DeployedPackage(
                obj.flow_datastore, spec.package_url, spec.package_sha, spec.package_metadata or ""
            )
        else:  # no package was saved at create: package the code, as `flow.py run` does
            package = native.PackageOnDemand(obj)
        config_file = ctx.find_root().params.get("local_config_file")
        argv, env, decos = native.step_command(obj, spec, package, config_file)
    except Exception as exc:
        click.echo(
            native.LAUNCH_ERROR_PREFIX + native.launch_error(spec.step, launcher, exc), err=True
        )
        sys.exit(1)
    if dry_run:
        click.echo(json.dumps({"argv": argv, "env": env}))
        return
    code = native.run_task(spec.step, argv, native.task_environment(env), decos)
    if launcher in REMOTE_COMPUTE_DECORATORS:
        native.record_dagster_metadata(obj, spec)
    sys.exit(code)


@dagster.command(
    "compile-component",
    hidden=True,
    help="Internal: what `create` does, for the dg component MetaflowFlowComponent.",
)
@click.option(
    "--request",
    "request_json",
    required=True,
    help='JSON object: {"out_file", "name", "identity", "options": {CompileOptions fields}}.',
)
@click.pass_obj
def compile_component(obj: Any, request_json: str) -> None:
    """Run by `MetaflowFlowComponent.build_defs` on a cache miss (`component_cache.compile_into`):
    the component's attributes as one JSON request, compiled by `create`'s own code path
    (`deploy.deploy`); prints the job name and file as one JSON line."""
    from .deploy import DeployRequest, deploy
    from .notifications import notifications_from_options
    from .tokens import TokenOptions

    spec = json.loads(request_json)
    notify: dict[str, Any] | None = spec["options"].pop("notifications", None)
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["options"].items()}
    options["notifications"] = notifications_from_options(**notify) if notify else None
    options["regenerate"] = "automatic: loading its dg component recompiles a changed flow"
    job_name = _resolve_job_name(obj, spec.get("name"))
    request = DeployRequest(
        job_name=job_name,
        out_file=spec["out_file"],
        tokens=TokenOptions(identity=spec.get("identity") or "production"),
        options=options,
        announce=False,
    )
    compiled = deploy(obj, request, lambda: _open_instance(obj, may_create=True))
    click.echo(json.dumps({"job_name": job_name, "definitions_file": compiled.definitions_file}))
