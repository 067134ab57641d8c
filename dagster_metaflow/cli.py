"""`python flow.py dagster ...`: the Metaflow CLI group of dagster-metaflow."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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


EXECUTORS = ("threads", "multiprocess", "forkserver", "in_process")


class DagsterMetaflowException(MetaflowException):
    headline = "dagster-metaflow error"


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


@cli.group(help="Compile this flow to a Dagster job and operate it.")
@click.pass_obj
def dagster(obj: Any) -> None:
    obj.check(obj.graph, obj.flow, obj.environment, pylint=obj.pylint)


def _resolve_job_name(obj: Any, name: str | None) -> str:
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
) -> FlowIR:
    """Collect everything `create` needs from Metaflow's CLI state into a FlowIR."""
    from metaflow import decorators
    from metaflow.tagging_util import validate_tags

    from .ir import CompileOptions, IRError, build_flow_ir

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
    )
    try:
        return build_flow_ir(obj.flow, obj.graph, options)
    except IRError as exc:
        raise DagsterMetaflowException(str(exc)) from None


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


@dagster.command(help="Compile this flow into a Dagster definitions file.")
@click.argument("file", required=False, default=None)
@click.option("--name", default=None, help="Dagster job name (default: the flow name).")
@click.option("--tag", "tags", multiple=True, default=None, help="Metaflow tag for every run (repeatable).")
@click.option("--namespace", default=None, help="Metaflow namespace the steps run in.")
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
    type=click.IntRange(min=1),
    help="Stop the whole run after this many seconds.",
)
@click.option(
    "--max-workers",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Maximum number of steps running at once in one run.",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="threads",
    show_default=True,
    help="Dagster executor of the job: threads (one thread per running step, fastest), "
    "multiprocess/forkserver (one process per step) or in_process (one step at a time).",
)
@click.pass_obj
def create(
    obj: Any,
    file: str | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    namespace: str | None = None,
    with_decorators: Sequence[str] = (),
    workflow_timeout: int | None = None,
    max_workers: int = 16,
    executor: str = "threads",
) -> None:
    job_name = _resolve_job_name(obj, name)
    out_file = file or f"{job_name.lower()}_dagster.py"
    if os.path.realpath(out_file) == os.path.realpath(sys.argv[0]):
        raise DagsterMetaflowException(
            f"refusing to overwrite the flow file {sys.argv[0]!r}; choose another output FILE"
        )
    obj.echo(f"Compiling *{obj.flow.name}* to Dagster job *{job_name}*...", bold=True)
    ir = build_ir_from_obj(
        obj,
        out_file=out_file,
        job_name=job_name,
        tags=tags or (),
        namespace=namespace,
        with_decorators=with_decorators or (),
        workflow_timeout=workflow_timeout,
        max_workers=max_workers,
        executor=executor,
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
    tmp = out_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out_file)
    obj.echo(f"Wrote {out_file} ({len(ir.steps)} ops, job {job_name}).")
    obj.echo(f"Load it with:  dagster dev -f {out_file}")
    obj.echo(f"Run it with:   dagster job execute -f {out_file} -j {job_name}")
