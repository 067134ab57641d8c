"""Launch one task the way Metaflow's native runtime (`flow.py run`) does.

A step with @kubernetes, @batch, @conda or @pypi is launched by its decorators' runtime
hooks, which only Metaflow's runtime calls: `runtime_init` and `runtime_task_created` (the
code package, the step's environment), then `runtime_step_cli`, which rewrites the command
Metaflow's `CLIArgs` holds (`step` becomes `kubernetes step <package>` with the pod's
options; the interpreter becomes the environment's). The op of such a step runs
`flow.py ... dagster launch-step`: the flow loaded by Metaflow's own CLI, with its decorators
initialised, calls the hooks here as `metaflow.runtime.NativeRuntime`, `Task` and `Worker`
do, runs the resulting command and reports its exit code (the op supervises both).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..task_options import TaskOptions

# run_step tells a failed launch (before the task ran) from a failed task by this prefix
LAUNCH_ERROR_PREFIX = "[dagster-metaflow launch failed] "
# the remote decorators ask the package for its url and sha instead of uploading it again
# (Metaflow's code path for a package uploaded ahead, `FEAT_ALWAYS_UPLOAD_CODE_PACKAGE`)
UPLOADED_PACKAGE_FLAG = "METAFLOW_FEAT_ALWAYS_UPLOAD_CODE_PACKAGE"
# the user's own value of that flag ("" for none), which the task gets back
USER_FLAG_VAR = "DAGSTER_METAFLOW_USER_FEAT_ALWAYS_UPLOAD"


class DeployedPackage:
    """The code package `create` saved in the flow's datastore, as the runtime hooks use a
    `MetaflowPackage`: @kubernetes/@batch pass its url and sha to the remote task, @conda
    and @pypi extract it for the environment's interpreter."""

    def __init__(self, flow_datastore: Any, url: str, sha: str, metadata: str) -> None:
        self._flow_datastore = flow_datastore
        self._url = url
        self._sha = sha
        self.package_metadata = metadata
        self._blob: bytes | None = None

    def package_url(self, timeout: float | None = None) -> str:
        return self._url

    def package_sha(self, timeout: float | None = None) -> str:
        return self._sha

    @property
    def blob(self) -> bytes:
        if self._blob is None:
            for key, blob in self._flow_datastore.load_data([self._sha], force_raw=True):
                if key == self._sha:
                    self._blob = bytes(blob)
            if self._blob is None:
                raise RuntimeError(f"code package {self._sha} not found in the flow's datastore")
        return self._blob

    def extract_into(
        self, dest_dir: str = ".", content_types: Any = None, timeout: float | None = None
    ) -> None:
        from metaflow.package import MetaflowPackage
        from metaflow.packaging_sys import ContentType

        types = int(content_types if content_types is not None else ContentType.ALL_CONTENT)
        MetaflowPackage.cls_extract_into(
            self.package_metadata, io.BytesIO(self.blob), dest_dir, types
        )

    @staticmethod
    def get_post_extract_env_vars(pkg_metadata: str, dest_dir: str = ".") -> dict[str, str]:
        from metaflow.package import MetaflowPackage

        return dict(MetaflowPackage.get_post_extract_env_vars(pkg_metadata, dest_dir))


class PackageOnDemand:
    """A `MetaflowPackage` of the flow made the first time a hook uses it (most launches
    need none: the remote ones get the deployment's package)."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj
        self._package: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._package is None:
            from metaflow.package import MetaflowPackage

            obj = self._obj
            self._package = MetaflowPackage(
                obj.flow, obj.environment, obj.echo, suffixes=obj.package_suffixes
            )
        return getattr(self._package, name)


@dataclass
class _Task:
    """The attributes of `metaflow.runtime.Task` that `CLIArgs`, `Worker._launch` and the
    step decorators' runtime hooks read."""

    flow: Any
    step: str
    run_id: str
    task_id: str
    input_paths: list[str]
    split_index: int | None
    ubf_context: str | None
    entrypoint: list[str]
    retries: int
    user_code_retries: int
    tags: Any  # the metadata provider's sticky tags (a set), as Task has them
    decos: list[Any]
    metadata_type: str
    environment_type: str
    datastore_type: str
    datastore_sysroot: str
    event_logger_type: str
    monitor_type: str
    clone_run_id: str | None = None
    is_cloned: bool = False
    ubf_iter: Any = None
    env: dict[str, str] = field(default_factory=dict)


def init_step_environment(obj: Any, step: str) -> None:
    """Create the step's environment (@conda/@pypi: solve, download, create with micromamba),
    as `flow.py run` does before any task; a no-op once it exists. Other environments do
    nothing here."""
    import inspect

    init = obj.environment.init_environment
    if "only_steps" in inspect.signature(init).parameters:
        init(obj.echo, only_steps=[step])
    else:
        init(obj.echo)


def step_command(
    obj: Any, spec: TaskOptions, package: Any, config_file: str | None = None
) -> tuple[list[str], dict[str, str], list[Any]]:
    """(argv, environment additions, decorators) of the task, built by Metaflow's `CLIArgs`
    and the step decorators' runtime hooks, in the order Metaflow's runtime calls them.

    `obj` is Metaflow's CLI state (flow, graph, datastore, metadata, environment, ...).
    """
    decos = list(getattr(obj.flow, spec.step).decorators)
    obj.metadata.add_sticky_tags(tags=list(spec.tags))  # the run's tags (`run --tag`)
    _runtime_init(obj, spec, package, decos)
    task = _new_task(obj, spec, decos)
    _task_created(obj, spec, decos)
    args = _task_cli_args(spec, task, decos)
    if config_file:
        args.top_level_options["local-config-file"] = config_file
    env = {str(k): str(v) for k, v in args.get_env().items()}
    env["PYTHONUNBUFFERED"] = "x"
    env["METAFLOW_RUN_ID"] = str(spec.run_id)
    return [str(a) for a in args.get_args()], env, decos


def _runtime_init(obj: Any, spec: TaskOptions, package: Any, decos: Sequence[Any]) -> None:
    """What `NativeRuntime.__init__` does for this task's step: the decorators' `runtime_init`."""
    from metaflow.system_context import system_context

    system_context._update(run_id=spec.run_id)
    for deco in decos:
        if deco.runtime_init_ctx is not None:
            deco.runtime_init_ctx(spec.step)
        else:
            deco.runtime_init(obj.flow, obj.graph, package, spec.run_id)


def _new_task(obj: Any, spec: TaskOptions, decos: list[Any]) -> _Task:
    """The task as the native runtime's `Task` would describe it."""
    return _Task(
        flow=obj.flow,
        step=spec.step,
        run_id=spec.run_id,
        task_id=spec.task_id,
        input_paths=list(spec.input_paths),
        split_index=spec.split_index,
        ubf_context=spec.ubf_context,
        entrypoint=list(obj.entrypoint),
        retries=spec.retry_count,
        user_code_retries=spec.max_user_code_retries,
        tags=obj.metadata.sticky_tags,
        decos=decos,
        metadata_type=obj.metadata.TYPE,
        environment_type=obj.environment.TYPE,
        datastore_type=obj.flow_datastore.TYPE,
        datastore_sysroot=obj.flow_datastore.datastore_root,
        event_logger_type=obj.event_logger.TYPE,
        monitor_type=obj.monitor.TYPE,
        clone_run_id=spec.clone_run_id,
    )


def _task_created(obj: Any, spec: TaskOptions, decos: Sequence[Any]) -> None:
    """What `Task.__init__` does: open the attempt's datastore (not written: the task
    initialises it) and call the decorators' `runtime_task_created`."""
    from metaflow.system_context import system_context

    task_ds = obj.flow_datastore.get_task_datastore(
        spec.run_id, spec.step, spec.task_id, attempt=spec.retry_count, mode="w"
    )
    system_context._update(
        task_id=spec.task_id,
        split_index=spec.split_index,
        is_cloned=False,
        ubf_context=spec.ubf_context,
        task_datastore=task_ds,
        input_paths=list(spec.input_paths),
    )
    for deco in decos:
        if deco.runtime_task_created_ctx is not None:
            deco.runtime_task_created_ctx(spec.step)
        else:
            deco.runtime_task_created(
                task_ds,
                spec.task_id,
                spec.split_index,
                list(spec.input_paths),
                False,
                spec.ubf_context,
            )


def _task_cli_args(spec: TaskOptions, task: _Task, decos: Sequence[Any]) -> Any:
    """What `Worker._launch` does: the task's `CLIArgs`, rewritten by the decorators'
    `runtime_step_cli` (e.g. `step` becomes `kubernetes step ...`)."""
    from metaflow.runtime import CLIArgs
    from metaflow.system_context import system_context

    args = CLIArgs(task)
    if spec.clone_run_id:
        args.command_options["clone-run-id"] = spec.clone_run_id
    system_context._update(
        task_id=spec.task_id,
        split_index=spec.split_index,
        input_paths=list(spec.input_paths),
        ubf_context=spec.ubf_context,
        retry_count=spec.retry_count,
        max_user_code_retries=spec.max_user_code_retries,
    )
    for deco in decos:
        if deco.runtime_step_cli_ctx is not None:
            deco.runtime_step_cli_ctx(spec.step, args)
        else:
            deco.runtime_step_cli(
                args, spec.retry_count, spec.max_user_code_retries, spec.ubf_context
            )
    return args


def task_environment(additions: Mapping[str, str]) -> dict[str, str]:
    """The task's environment: the launcher's, with Metaflow's additions, and the user's own
    value of the flag the launcher set for itself."""
    env = dict(os.environ)
    if USER_FLAG_VAR in env:  # the op set the flag for the launcher: restore the user's
        user_flag = env.pop(USER_FLAG_VAR)
        env.pop(UPLOADED_PACKAGE_FLAG, None)
        if user_flag:
            env[UPLOADED_PACKAGE_FLAG] = user_flag
    env.update(additions)
    return env


def run_task(step: str, argv: Sequence[str], env: Mapping[str, str], decos: Sequence[Any]) -> int:
    """Run the task (its output goes straight to the op's pipes), then call the decorators'
    `runtime_finished` as the native runtime does when its run ends; return the exit code."""
    proc = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL)
    exception: BaseException | None = None
    try:
        code = proc.wait()
    except BaseException as exc:  # the op stops: the task goes with the launcher's group
        exception = exc
        proc.kill()
        code = proc.wait()
    for deco in decos:
        try:
            if deco.runtime_finished_ctx is not None:
                deco.runtime_finished_ctx(step, exception)
            else:
                deco.runtime_finished(exception)
        except Exception as exc:
            print(f"dagster-metaflow: @{deco.name} runtime_finished failed: {exc}", file=sys.stderr)
    return code


def record_dagster_metadata(obj: Any, spec: TaskOptions) -> None:
    """A remote task never sees the op's environment (a pod gets only its @environment
    variables): record where it ran in Dagster from here, once it ended, as the task's own
    `dagster_internal` decorator does for a local one."""
    from metaflow_extensions.dagster_metaflow.plugins.dagster_internal import dagster_task_metadata

    entries = dagster_task_metadata(spec.step == obj.graph.start_step, spec.retry_count)
    if not entries:
        return
    try:
        obj.metadata.register_metadata(spec.run_id, spec.step, spec.task_id, entries)
    except Exception as exc:  # never fails the task: only the link back to Dagster is missing
        print(
            f"dagster-metaflow: could not record the Dagster run on {spec.step}/{spec.task_id}: {exc}",
            file=sys.stderr,
        )


def launch_error(step: str, launcher: str, exc: BaseException) -> str:
    """One line for a launch that failed before the task ran: Metaflow's own headline and
    the first line of its message (e.g. micromamba could not be installed)."""
    headline = getattr(exc, "headline", None) or type(exc).__name__
    message = str(getattr(exc, "message", None) or exc).strip()
    first = message.splitlines()[0].rstrip(":") if message else ""
    line = f"step {step!r} (@{launcher}): {headline}" + (f": {first}" if first else "")
    if type(exc).__name__ == "MicromambaException" and not _micromamba_found():
        line += " (micromamba is not installed here: install it or set METAFLOW_PATH_TO_MICROMAMBA)"
    return line


def _micromamba_found() -> bool:
    """Whether Metaflow finds a micromamba binary (where `Micromamba()` looks for one)."""
    import shutil

    home = os.environ.get("METAFLOW_TOKEN_HOME") or os.environ.get(
        "METAFLOW_HOME", "~/.metaflowconfig"
    )
    candidates = (
        os.environ.get("METAFLOW_PATH_TO_MICROMAMBA") or "micromamba",
        os.path.join(os.path.expanduser(home), "micromamba", "bin", "micromamba"),
    )
    return any(shutil.which(c) for c in candidates)
