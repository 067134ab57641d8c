"""Deploying a loaded flow: compile it, write the definitions file, record the deployment.

One code path for every front end that runs inside `python flow.py ...` (Metaflow's CLI
state exists only there): `dagster create`, and the hidden `dagster compile-component`
that the dg component (`dagster_metaflow.component`) runs on a cache miss. Both therefore
get the same job name rules, production token, checks and deployment record, so `status`,
`list-runs` and `trigger` work for a component's job as for a created one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import compiler
from .errors import DagsterMetaflowException
from .tokens import TokenOptions

if TYPE_CHECKING:
    from .compiler import CompiledFlow
    from .deployments import Deployment
    from .ir import FlowIR


@dataclass(frozen=True, kw_only=True)
class DeployRequest:
    """What a deployment is asked for: the resolved job name, the output file, the token
    options and every other `CompileOptions` field (`options`, passed through as given)."""

    job_name: str
    out_file: str
    force: bool = False
    tokens: TokenOptions = field(default_factory=TokenOptions)
    options: Mapping[str, Any] = field(default_factory=dict)
    announce: bool = True  # print what was deployed and how to go on (create's epilogue)


def deployment_error(exc: Exception) -> DagsterMetaflowException:
    """A deployments error as the one line the CLI prints, naming this flow file."""
    return DagsterMetaflowException(str(exc).replace("<flow>.py", os.path.basename(sys.argv[0])))


def deploy(
    obj: Any, request: DeployRequest, open_instance: Callable[[], AbstractContextManager[Any]]
) -> CompiledFlow:
    """Compile the flow Metaflow loaded (`obj`), write the file atomically and record the
    deployment in the instance `open_instance` opens (opened only once the output path passed)."""
    from . import deployments
    from .definitions_file import check_output_path, write_atomically
    from .runtime import sensors
    from .tokens import flow_token_prefix, keep_token, resolve_token

    job_name, out_file = request.job_name, request.out_file
    check_output_path(out_file, request.force, sys.argv[0])
    obj.echo(f"Compiling *{obj.flow.name}* to Dagster job *{job_name}*...", bold=True)
    with open_instance() as instance:
        prev = previous(obj, instance, job_name, request.force)
        prefix = flow_token_prefix(job_name)
        token, new_token = resolve_token(prev, prefix, request.tokens)
        compiled = _compile(obj, request, token)
        write_atomically(out_file, compiled.text)
        watching = [t.name for t in compiled.ir.automation.triggers]
        dep = compiled.deployment(token, sensors.watch_extra(instance, prev, watching))
        deployments.record(instance, dep, replaces=prev)
        keep_token(prefix, token, new_token, request.tokens, obj.echo)
        if request.announce:
            echo_created(obj, compiled.ir, out_file, instance)
    return compiled


def preview(
    obj: Any, request: DeployRequest, open_instance: Callable[[], AbstractContextManager[Any]]
) -> dict[str, Any]:
    """What `deploy` would deploy, written and recorded nowhere (`create --only-json`): the
    definitions compiled with the token a deployment would keep (a new one is made only by
    `create`), read from the instance when there is one."""
    from .deployments import dagster_home

    prev = None
    if os.path.isdir(dagster_home()[0]):
        with open_instance() as instance:
            prev = previous(obj, instance, request.job_name, request.force)
    token = prev.production_token if prev is not None else None
    production = request.tokens.identity == "production"
    compiled = _compile(obj, request, token)
    return {
        "flow_name": obj.flow.name,
        "job_name": request.job_name,
        "file": request.out_file,
        "production_token": token if production else None,
        "new_production_token": production and token is None,
        "definitions": compiled.text,
    }


def _compile(obj: Any, request: DeployRequest, token: str | None) -> CompiledFlow:
    """The flow compiled as `request` asks, deployed by this user with production token
    `token` (baked in only under the production identity)."""
    from .tokens import username

    options = compiler.CompileOptions(
        job_name=request.job_name,
        out_file=request.out_file,
        owner=username(),
        production_token=token if request.tokens.identity == "production" else None,
        **request.options,
    )
    return compiler.compile_flow(compiler.flow_source(obj), options, obj.echo)


def previous(obj: Any, instance: Any, job_name: str, force: bool) -> Deployment | None:
    """The deployment being replaced, if any; a corrupt record only with --force (what
    could be read of it still says who may replace it)."""
    from . import deployments

    try:
        return deployments.get(instance, job_name)
    except deployments.CorruptRecord as exc:
        if not force:
            raise deployment_error(exc) from None
        obj.echo(f"Overwriting the corrupt deployment record {exc.key!r} (--force).", err=True)
        return exc.partial


def echo_created(obj: Any, ir: FlowIR, out_file: str, instance: Any) -> None:
    """What `create` did, and how to go on."""
    from .deployments import workspace_path

    workspace = workspace_path(instance)
    obj.echo(f"Wrote {out_file} ({len(ir.steps)} ops, job {ir.job_name}).")
    keys = ["/".join(_asset_key(ir))] + ["/".join((*_asset_key(ir), a)) for a in ir.assets]
    obj.echo(f"Assets (group {ir.job_name}): {', '.join(keys)}.")
    obj.echo(f"Deployed as *{ir.job_name}* in the Dagster instance at {instance.root_directory}.")
    echo_automation(obj, ir, workspace)
    obj.echo(f"Trigger it with:  python {os.path.basename(sys.argv[0])} dagster trigger")
    obj.echo(f"Load it with:     dagster dev -f {out_file}")
    obj.echo(f"All deployments:  dagster dev -w {workspace}")


def echo_automation(obj: Any, ir: FlowIR, workspace: str) -> None:
    """The schedule, sensor and exit hooks the deployment got."""
    auto = ir.automation
    if auto.schedule is not None:
        tz = f" ({auto.schedule.timezone})" if auto.schedule.timezone else " (UTC)"
        obj.echo(f"Schedule {ir.job_name}_schedule: cron '{auto.schedule.cron}'{tz}, running.")
    by_assets = [t for t in auto.triggers if t.kind == "run" and ir.asset_automation]
    by_sensor = [t for t in auto.triggers if t not in by_assets]
    if by_sensor:
        what = " and ".join(t.name for t in by_sensor)
        obj.echo(
            f"Sensor {ir.job_name}_{'trigger_on_finish' if by_sensor[0].kind == 'run' else 'trigger'}: "
            f"starts a run when {what} occurred, running."
        )
    if by_assets:
        what = " and ".join(t.flow or t.name for t in by_assets)
        obj.echo(
            f"Automation {ir.job_name}_automation: an AutomationCondition starts a run when "
            f"{what} materialized its asset, running."
        )
    if auto.schedule is not None or auto.triggers:
        obj.echo(
            f"Schedules and sensors fire while a daemon runs:  dagster-daemon run -w {workspace}"
        )
    if auto.exit_hooks:
        hooks = auto.exit_hooks
        obj.echo(
            f"Exit hooks: on success {list(hooks.on_success)}, on error {list(hooks.on_error)}."
        )


__all__ = [
    "DeployRequest",
    "deploy",
    "deployment_error",
    "echo_automation",
    "echo_created",
    "preview",
]


def _asset_key(ir: FlowIR) -> tuple[str, ...]:
    from .translator import flow_asset_key

    auto = ir.automation
    return flow_asset_key(ir.flow_name, auto.project_name, auto.branch_name)
