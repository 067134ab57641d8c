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
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .deployments import Deployment
from .runtime.worker import settle

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun

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
    from dagster import DagsterEvent, DagsterEventType

    from .run_launcher import spawn_worker

    instance.report_dagster_event(
        DagsterEvent(event_type_value=DagsterEventType.PIPELINE_STARTING.value, job_name=run.job_name),
        run_id=run.run_id,
    )
    try:
        spawn_worker(instance, run)
    except (OSError, RuntimeError) as exc:
        # never leave the run STARTING forever
        instance.report_run_failed(run, message=f"dagster-metaflow could not start the run worker: {exc}")
        raise LaunchError(f"could not start the run worker: {exc}") from exc
    fresh = instance.get_run_by_id(run.run_id)
    assert fresh is not None
    return fresh


def terminate(instance: DagsterInstance, run_id: str, wait: float = 15.0) -> bool:
    """Stop a run and its step processes; True once the run is CANCELED (or already finished).
    Only the run's own worker is ever signalled (its identity includes its start time); a
    run whose worker is already gone is ended at once."""
    from dagster import DagsterRunStatus

    from ._dagster_private import GRPC_INFO_TAG
    from .run_launcher import stop_worker
    from .runtime.worker import identity_of

    run = instance.get_run_by_id(run_id)
    if run is None:
        raise LaunchError(f"no Dagster run {run_id}")
    if run.is_finished:
        return False
    if run.status == DagsterRunStatus.QUEUED:
        instance.report_run_canceled(run, message="Canceled by dagster-metaflow terminate before it started")
        return True
    instance.report_run_canceling(run)
    run = instance.get_run_by_id(run_id) or run
    identity = identity_of(run)
    if identity is None and GRPC_INFO_TAG in run.tags:  # an older worker started by a code server
        try:
            instance.run_launcher.terminate(run_id)
        except Exception:
            pass
    stop_worker(instance, run)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        run = settle(instance, instance.get_run_by_id(run_id))
        if run is None or run.is_finished:
            return True
        time.sleep(0.5)
    if identity is not None and identity.signal(signal.SIGKILL):
        # the worker did not stop in time: its watchdog stops the steps and ends the run
        for _ in range(60):
            run = settle(instance, instance.get_run_by_id(run_id))
            if run is None or run.is_finished:
                return True
            time.sleep(0.5)
    return False


def status_name(run: DagsterRun | None) -> str | None:
    if run is None:
        return None
    return STATUS_NAMES.get(run.status.value, run.status.value)


def find_run(instance: DagsterInstance, run_id: str, job_name: str | None = None) -> DagsterRun | None:
    """A Dagster run by Dagster run id, or by the Metaflow run id (`dagster-<12 hex>`), as it
    really is (a run whose worker died is ended first)."""
    if run_id.startswith("dagster-"):
        from dagster import RunsFilter

        want = run_id[len("dagster-") :]
        for r in instance.get_runs(RunsFilter(job_name=job_name) if job_name else None):
            if r.run_id.replace("-", "")[: len(want)] == want:
                return settle(instance, r)
        return None
    return settle(instance, instance.get_run_by_id(run_id))


def list_runs(instance: DagsterInstance, job_name: str, statuses: Sequence[str] = (), limit: int = 100) -> list[DagsterRun]:
    """The job's runs, newest first, as they really are (see `runtime.worker.settle`)."""
    from dagster import DagsterRunStatus, RunsFilter

    flt = RunsFilter(job_name=job_name, statuses=[DagsterRunStatus(s) for s in statuses] if statuses else None)
    out = []
    for run in instance.get_runs(flt, limit=limit):
        fresh = settle(instance, run)
        if fresh is not None and (not statuses or fresh.status.value in statuses):
            out.append(fresh)
    return out


def ui_url(run_id: str) -> str:
    """Where `dagster dev` (default port, or DAGSTER_METAFLOW_UI_URL) shows the run."""
    base = os.environ.get("DAGSTER_METAFLOW_UI_URL", "http://127.0.0.1:3000").rstrip("/")
    return f"{base}/runs/{run_id}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


__all__ = ["LaunchError", "start_run", "terminate", "status_name", "find_run", "list_runs", "ui_url"]
