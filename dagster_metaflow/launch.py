"""Start, inspect and stop Dagster runs of a deployment without a webserver or daemon.

`trigger` creates the run in the instance exactly as `dagster job launch` does (same code
location name and origin, so `dagster dev` and `dagster-daemon` pointed at the instance know
it), then either
- launches it itself: a detached `dagster api execute_run` process, the command Dagster's
  own DefaultRunLauncher runs, in a new session so it outlives the CLI (the instance's
  default run coordinator, which would otherwise leave the run QUEUED without a daemon), or
- submits it to the queue when the instance's dagster.yaml configures a
  `QueuedRunCoordinator` explicitly: `dagster-daemon` dequeues and launches it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .deployments import Deployment

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun

TAG_WORKER_PID = "dagster-metaflow/worker-pid"
TAG_WORKER_HOST = "dagster-metaflow/worker-host"
TAG_DEPLOYMENT = "dagster-metaflow/deployment"

# Dagster run status -> the status string a Metaflow TriggeredRun reports
STATUS_NAMES = {
    "QUEUED": "PENDING",
    "NOT_STARTED": "PENDING",
    "STARTING": "PENDING",
    "MANAGED": "PENDING",
    "STARTED": "RUNNING",
    "CANCELING": "RUNNING",
    "SUCCESS": "SUCCEEDED",
    "FAILURE": "FAILED",
    "CANCELED": "ABORTED",
}


class LaunchError(Exception):
    """The run could not be created or started; the message says why."""


def uses_explicit_queue(instance: DagsterInstance) -> bool:
    """True when dagster.yaml configures a QueuedRunCoordinator (or run_queue) on purpose."""
    import yaml

    path = os.path.join(instance.root_directory, "dagster.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
    except OSError:
        return False
    coordinator = (cfg.get("run_coordinator") or {}).get("class", "")
    return coordinator == "QueuedRunCoordinator" or ("run_queue" in cfg and not coordinator)


def start_run(
    instance: DagsterInstance,
    dep: Deployment,
    run_config: Mapping[str, Any],
    tags: Mapping[str, str],
    run_id: str | None = None,
) -> tuple[DagsterRun, bool]:
    """Create the run of `dep`'s job and start it; returns (run, queued)."""
    from ._dagster_private import (
        DAGSTER_VERSION,
        WorkspaceOpts,
        create_run,
        get_code_location_from_workspace,
        get_remote_job_from_remote_repo,
        get_remote_repository_from_code_location,
        get_workspace_from_cli_opts,
    )

    if not os.path.exists(dep.definitions_file):
        raise LaunchError(
            f"the definitions file of deployment {dep.name!r} is missing: {dep.definitions_file}; "
            "run `python <flow>.py dagster create` again"
        )
    opts = WorkspaceOpts(
        python_file=(dep.definitions_file,),
        working_directory=os.path.dirname(dep.definitions_file),
    )
    queued = uses_explicit_queue(instance)
    with get_workspace_from_cli_opts(
        instance, version=DAGSTER_VERSION, workspace_opts=opts, allow_in_process=True
    ) as workspace:
        location = get_code_location_from_workspace(workspace, None)
        repo = get_remote_repository_from_code_location(location, None)
        remote_job = get_remote_job_from_remote_repo(repo, dep.name)
        try:
            run = create_run(
                instance=instance,
                code_location=location,
                remote_repo=repo,
                remote_job=remote_job,
                run_config=dict(run_config),
                tags=dict(tags),
                op_selection=None,
                run_id=run_id,
            )
        except Exception as exc:
            raise LaunchError(_one_line(exc)) from None
        if queued:
            return instance.submit_run(run.run_id, workspace), True
    return launch_detached(instance, run), False


def launch_detached(instance: DagsterInstance, run: DagsterRun) -> DagsterRun:
    """Start the run worker (`dagster api execute_run`) in its own session, as Dagster's
    DefaultRunLauncher does from a code server, so it outlives this process."""
    from dagster import DagsterEvent, DagsterEventType, serialize_value

    from ._dagster_private import ExecuteRunArgs

    assert run.job_code_origin is not None
    instance.report_dagster_event(
        DagsterEvent(event_type_value=DagsterEventType.PIPELINE_STARTING.value, job_name=run.job_name),
        run_id=run.run_id,
    )
    args = ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id, instance_ref=instance.get_ref())
    # `dagster api execute_run ...` with this interpreter: the `dagster` script may not be
    # on PATH (a virtualenv's python called by its full path)
    command = [sys.executable, "-m", "dagster", "api", "execute_run", serialize_value(args)]
    log_dir = os.path.join(instance.storage_directory(), "dagster_metaflow_workers")
    os.makedirs(log_dir, exist_ok=True)
    env = dict(os.environ)
    env["DAGSTER_HOME"] = instance.root_directory
    cwd = None
    pointer = run.job_code_origin.repository_origin.code_pointer
    if hasattr(pointer, "python_file"):
        cwd = os.path.dirname(pointer.python_file)
    try:
        with open(os.path.join(log_dir, f"{run.run_id}.log"), "ab") as log:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
    except OSError as exc:
        # never leave the run STARTING forever
        instance.report_run_failed(run, message=f"dagster-metaflow could not start the run worker: {exc}")
        raise LaunchError(f"could not start the run worker: {exc}") from exc
    instance.add_run_tags(run.run_id, {TAG_WORKER_PID: str(proc.pid), TAG_WORKER_HOST: socket.gethostname()})
    fresh = instance.get_run_by_id(run.run_id)
    assert fresh is not None
    return fresh


def terminate(instance: DagsterInstance, run_id: str, wait: float = 15.0) -> bool:
    """Stop a run and its step processes; True once the run is CANCELED (or already finished)."""
    from dagster import DagsterRunStatus

    from ._dagster_private import GRPC_INFO_TAG

    run = instance.get_run_by_id(run_id)
    if run is None:
        raise LaunchError(f"no Dagster run {run_id}")
    if run.is_finished:
        return False
    if run.status == DagsterRunStatus.QUEUED:
        instance.report_run_canceled(run, message="Canceled by dagster-metaflow terminate before it started")
        return True
    instance.report_run_canceling(run)
    if GRPC_INFO_TAG in run.tags:  # launched by a code server (UI, daemon): ask it
        try:
            instance.run_launcher.terminate(run_id)
        except Exception:
            pass
    pid = _local_worker_pid(run)
    if pid is not None:
        _signal(pid, signal.SIGINT)  # the run worker turns it into an interrupt of the plan
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return True
        time.sleep(0.5)
    if pid is not None and _signal(pid, signal.SIGKILL):
        # the worker did not stop in time: its steps are in their own sessions; the
        # executor's supervisors are gone with it, so mark the run ourselves
        instance.report_run_canceled(run, message="Run worker killed after not stopping in time")
        return True
    return False


def _local_worker_pid(run: DagsterRun) -> int | None:
    pid = run.tags.get(TAG_WORKER_PID)
    if not pid or run.tags.get(TAG_WORKER_HOST) != socket.gethostname():
        return None
    return int(pid)


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def status_name(run: DagsterRun | None) -> str | None:
    if run is None:
        return None
    return STATUS_NAMES.get(run.status.value, run.status.value)


def find_run(instance: DagsterInstance, run_id: str, job_name: str | None = None) -> DagsterRun | None:
    """A Dagster run by Dagster run id, or by the Metaflow run id (`dagster-<12 hex>`)."""
    if run_id.startswith("dagster-"):
        from dagster import RunsFilter

        want = run_id[len("dagster-") :]
        for r in instance.get_runs(RunsFilter(job_name=job_name) if job_name else None):
            if r.run_id.replace("-", "")[: len(want)] == want:
                return r
        return None
    return instance.get_run_by_id(run_id)


def list_runs(instance: DagsterInstance, job_name: str, statuses: Sequence[str] = (), limit: int = 100) -> list[DagsterRun]:
    from dagster import DagsterRunStatus, RunsFilter

    flt = RunsFilter(job_name=job_name, statuses=[DagsterRunStatus(s) for s in statuses] if statuses else None)
    return list(instance.get_runs(flt, limit=limit))


def ui_url(run_id: str) -> str:
    """Where `dagster dev` (default port, or DAGSTER_METAFLOW_UI_URL) shows the run."""
    base = os.environ.get("DAGSTER_METAFLOW_UI_URL", "http://127.0.0.1:3000").rstrip("/")
    return f"{base}/runs/{run_id}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


__all__ = ["LaunchError", "start_run", "terminate", "status_name", "find_run", "list_runs", "ui_url"]
