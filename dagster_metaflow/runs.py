"""Start, follow, inspect and stop Dagster runs of a deployment without a webserver or daemon.

`trigger` creates the run in the instance exactly as `dagster job launch` does (same code
location name and origin, so `dagster dev` and `dagster-daemon` pointed at the instance know
it), then either
- launches it itself: a detached run worker (`run_worker.py`: the body of `dagster api
  execute_run`, which Dagster's own DefaultRunLauncher runs), in a new session so it
  outlives the CLI (the instance's default run coordinator, which would otherwise leave
  the run QUEUED without a daemon), or
- submits it to the queue when the instance's dagster.yaml configures a
  `QueuedRunCoordinator` explicitly: `dagster-daemon` dequeues and launches it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import naming
from .deployments import Deployment
from .errors import DagsterMetaflowException
from .runtime.failures import TAG_ERROR, TAG_TIMED_OUT, failure_reason
from .runtime.ids import (
    ITERATIONS_KEY,
    NOT_TAKEN_KEY,
    NOT_TAKEN_VALUE,
    TASKS_KEY,
    UI_URL_VAR,
    run_page_url,
)
from .runtime.prepare import TAG_DEPLOYMENT
from .runtime.worker import settle

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun

    from .runtime.zygote import Zygote

Echo = Callable[..., None]


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
    from .run_launcher import step_zygote_for

    queued = uses_explicit_queue(instance)
    with ExitStack() as stack:
        with get_workspace_from_cli_opts(
            instance, version=DAGSTER_VERSION, workspace_opts=opts, allow_in_process=True
        ) as workspace:
            location = get_code_location_from_workspace(workspace, None)
            repo = get_remote_repository_from_code_location(location, None)
            remote_job = get_remote_job_from_remote_repo(repo, dep.name)
            # a queued run's worker is the daemon's; one forked from here gets a zygote now
            step_zygote = (
                None if queued else stack.enter_context(step_zygote_for(dep.name, remote_job.tags))
            )
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
        return launch_detached(instance, run, step_zygote), False


def launch_detached(
    instance: DagsterInstance, run: DagsterRun, step_zygote: Zygote | None = None
) -> DagsterRun:
    """Start the run worker (what `dagster api execute_run` runs) in its own session, as
    Dagster's DefaultRunLauncher does from a code server, so it outlives this process; a
    forked worker adopts `step_zygote`."""
    from dagster import DagsterEvent, DagsterEventType

    from .run_launcher import fork_worker, spawn_worker

    instance.report_dagster_event(
        DagsterEvent(
            event_type_value=DagsterEventType.PIPELINE_STARTING.value, job_name=run.job_name
        ),
        run_id=run.run_id,
    )
    try:
        if fork_worker(instance, run, step_zygote) is None:
            spawn_worker(instance, run)
    except (OSError, RuntimeError) as exc:
        # never leave the run STARTING forever
        instance.report_run_failed(
            run, message=f"dagster-metaflow could not start the run worker: {exc}"
        )
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
        instance.report_run_canceled(
            run, message="Canceled by dagster-metaflow terminate before it started"
        )
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


def error_of(run: DagsterRun | None) -> str | None:
    """Why a run failed, as its run worker recorded it (runtime/failures.py)."""
    return (run.tags.get(TAG_ERROR) or None) if run is not None else None


def timed_out(run: DagsterRun) -> bool:
    """Whether the run was stopped by its --workflow-timeout."""
    return run.tags.get(TAG_TIMED_OUT) == "true"


def status_name(run: DagsterRun | None) -> str | None:
    if run is None:
        return None
    return STATUS_NAMES.get(run.status.value, run.status.value)


def find_run(
    instance: DagsterInstance, run_id: str, job_name: str | None = None
) -> DagsterRun | None:
    """A Dagster run by Dagster run id, or by the Metaflow run id (`dagster-<12 hex>`), as it
    really is (a run whose worker died is ended first)."""
    if run_id.startswith("dagster-"):
        want = run_id[len("dagster-") :]
        runs = deployment_runs(instance, job_name) if job_name else instance.get_runs()
        for r in runs:
            if r.run_id.replace("-", "")[: len(want)] == want:
                return settle(instance, r)
        return None
    return settle(instance, instance.get_run_by_id(run_id))


def deployment_runs(
    instance: DagsterInstance, job_name: str, statuses: Sequence[str] = (), limit: int | None = None
) -> list[DagsterRun]:
    """The deployment's runs, newest first: its job's, and those of another job (Dagster's
    implicit asset job, launched by "Materialize") that its ops tagged as the deployment's."""
    from dagster import DagsterRunStatus, RunsFilter

    states = [DagsterRunStatus(s) for s in statuses] if statuses else None
    found = {
        rec.dagster_run.run_id: rec
        for flt in (
            RunsFilter(job_name=job_name, statuses=states),
            RunsFilter(tags={TAG_DEPLOYMENT: job_name}, statuses=states),
        )
        for rec in instance.get_run_records(flt, limit=limit)
    }
    records = sorted(found.values(), key=lambda rec: rec.create_timestamp, reverse=True)
    return [rec.dagster_run for rec in (records[:limit] if limit else records)]


def of_deployment(run: DagsterRun, job_name: str) -> bool:
    """Whether `run` is the deployment's: of its job, or tagged by its ops (`deployment_runs`)."""
    return run.job_name == job_name or run.tags.get(TAG_DEPLOYMENT) == job_name


TIMED_OUT = "TIMED_OUT"  # list-runs --timed-out: not a Dagster status, a tag of the run


def list_runs(
    instance: DagsterInstance, job_name: str, statuses: Sequence[str] = (), limit: int = 100
) -> list[DagsterRun]:
    """The job's runs, newest first, as they really are (see `runtime.worker.settle`);
    `TIMED_OUT` among `statuses`: the runs their --workflow-timeout stopped."""
    want_timed_out = TIMED_OUT in statuses
    # timed-out runs are found by their tag, so every run is read when they are asked for
    query = [] if want_timed_out else list(statuses)
    out = []
    for run in deployment_runs(instance, job_name, query, limit):
        fresh = settle(instance, run)
        if fresh is not None and (
            not statuses or fresh.status.value in statuses or (want_timed_out and timed_out(fresh))
        ):
            out.append(fresh)
    return out


RUN_LINE_HEADER = f"{'RUN':<40} {'STATUS':<10} {'STARTED (UTC)':<19}  {'DURATION':>9}  DAGSTER RUN"


def run_line(instance: DagsterInstance, flow_name: str, run: DagsterRun) -> str:
    """One run as `list-runs` shows it: Metaflow pathspec, status (the vocabulary of `status`
    and the Deployer), start time, duration so far or in all, Dagster run id."""
    import datetime

    from .runtime.ids import metaflow_run_id

    record = instance.get_run_record_by_id(run.run_id)
    start = record.start_time if record is not None else None
    end = record.end_time if record is not None else None
    started = (
        datetime.datetime.fromtimestamp(start, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        if start
        else "-"
    )
    took = f"{(end or time.time()) - start:.1f}s" if start else "-"
    pathspec = f"{flow_name}/{metaflow_run_id(run.run_id)}"
    return f"{pathspec:<40} {status_name(run) or '-':<10} {started:<19}  {took:>9}  {run.run_id}"


def where_to_see(instance: DagsterInstance, run_id: str) -> str:
    """The run's page, or how to serve it: the UI of this instance's deployments."""
    from .deployments import workspace_path

    return run_page_url(run_id) or (
        f"see it with `dagster dev -w {workspace_path(instance)}` at /runs/{run_id} "
        f"(set {UI_URL_VAR} to print its URL)"
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# -- starting a run for the CLI, and following it until it ends --------------------------


@dataclass(frozen=True)
class RunRequest:
    """A run to start: its config and tags, where to report its ids, whether to follow it."""

    run_config: dict[str, Any]
    tags: dict[str, str]
    verb: str  # how the announcement says it started: "triggered", "resumed from ..."
    run_id_file: str | None = None  # gets the Metaflow run id
    attribute_file: str | None = None  # gets what Metaflow's Deployer API reads
    wait: bool = False


@dataclass(frozen=True)
class Caller:
    """What starting and following a run needs from the flow the CLI loaded."""

    echo: Echo  # announcements and progress (Metaflow's echo: stderr, styled)
    script: str  # the flow file, named in the resume hint
    total_steps: int  # steps of the flow's graph, for the progress line
    metadata: str  # Metaflow's metadata spec, for a record that keeps none


def start(instance: DagsterInstance, dep: Deployment, request: RunRequest, caller: Caller) -> None:
    """Start a run of `dep`, write its ids where asked, announce it; with `request.wait`
    follow it until it ends."""
    import uuid

    from .definitions_file import definitions_problem
    from .run_launcher import take_run_body_end
    from .runtime.ids import metaflow_run_id
    from .runtime.prepare import TAG_PATHSPEC

    dagster_run_id = str(uuid.uuid4())
    mf_run_id = metaflow_run_id(dagster_run_id)
    pathspec = f"{dep.flow_name}/{mf_run_id}"
    tags = {TAG_DEPLOYMENT: dep.name, TAG_PATHSPEC: pathspec, **request.tags}
    problem = definitions_problem(dep)
    if problem:
        raise DagsterMetaflowException(problem)
    try:
        run, queued = start_run(instance, dep, request.run_config, tags, run_id=dagster_run_id)
    except LaunchError as exc:
        raise DagsterMetaflowException(f"could not start a run of {dep.name!r}: {exc}") from None
    body_end = take_run_body_end(run.run_id)  # this process's to close, or `follow`'s
    try:
        _announce(instance, dep, request, caller, run, queued, pathspec)
        if request.wait:
            fd, body_end = body_end, None
            follow(instance, run.run_id, pathspec, caller, fd)
    finally:
        if body_end is not None:
            os.close(body_end)


def _announce(
    instance: DagsterInstance,
    dep: Deployment,
    request: RunRequest,
    caller: Caller,
    run: DagsterRun,
    queued: bool,
    pathspec: str,
) -> None:
    """Write the run's ids where asked, and say it started."""
    mf_run_id = pathspec.rsplit("/", 1)[1]
    if request.run_id_file:
        with open(request.run_id_file, "w") as f:
            f.write(mf_run_id)
    write_attribute_file(
        request.attribute_file,
        {
            "name": dep.name,
            "metadata": dep.metadata or caller.metadata,
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
    caller.echo(f"Run *{pathspec}* {request.verb} ({how}).", bold=True)
    caller.echo(f"Dagster run {run.run_id}: {where_to_see(instance, run.run_id)}")


def write_attribute_file(path: str | None, content: dict[str, Any]) -> None:
    """What Metaflow's Deployer API reads back from a command (`--deployer-attribute-file`)."""
    if path:
        with open(path, "w") as f:
            json.dump(content, f)


def step_of(step_key: str) -> str:
    """Metaflow step of an op's step key (`op_body[2_1]`, `Flow.op_body[2_1]` -> `body`)."""
    from .runtime.ids import op_of_step_key

    op = op_of_step_key(step_key)
    for prefix in ("op_", "chunk_"):  # a step's op, a chunk of a step's tasks
        if op.startswith(prefix):
            return op[len(prefix) :]
    return op


def tasks_of(step_key: str) -> int:
    """Metaflow tasks a successful op ran, from its step key: a chunk op's chunk, one for any
    other op (the progress line reads the count an op's output says first)."""
    chunk = naming.chunk_range(step_key.partition("[")[2].rstrip("]"))
    return 1 if chunk is None else len(chunk)


# the events a run's progress is told from (Dagster event type names)
PROGRESS_EVENTS = frozenset(
    ("STEP_START", "STEP_OUTPUT", "STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED")
)


@dataclass
class RunProgress:
    """A run's step events so far, told as one progress line."""

    total: int
    running: set[str] = field(default_factory=set)
    finished_steps: set[str] = field(default_factory=set)
    skipped_steps: set[str] = field(default_factory=set)
    tasks_done: int = 0
    failed: list[str] = field(default_factory=list)
    reason: str | None = None  # the first failure: its task and the user's error line
    # per op with outputs so far: whether one was no not-taken marker (an op whose every
    # output is a marker ran no Metaflow task: a branch not taken, no task done)
    ran_task: dict[str, bool] = field(default_factory=dict)
    # ops that ran more than one Metaflow task (a chunk, a loop, a control task): how many
    op_tasks: dict[str, int] = field(default_factory=dict)

    def add(self, ev: Any) -> None:
        """Take one event of the run (any kind: those not in PROGRESS_EVENTS are ignored)."""
        if (
            ev is None
            or ev.step_key is None
            or ev.event_type_value not in PROGRESS_EVENTS
            or step_of(ev.step_key).startswith(("fanout_", "regroup_"))
        ):
            return
        key, kind = ev.step_key, ev.event_type_value
        if kind == "STEP_START":
            self.running.add(key)
            return
        if kind == "STEP_OUTPUT":
            metadata = ev.step_output_data.metadata
            marker = getattr(metadata.get(NOT_TAKEN_KEY), "value", None) == NOT_TAKEN_VALUE
            self.ran_task[key] = self.ran_task.get(key, False) or not marker
            for counted in (TASKS_KEY, ITERATIONS_KEY):
                if counted in metadata:
                    self.op_tasks[key] = int(metadata[counted].value)
            return
        self.running.discard(key)
        if kind == "STEP_SUCCESS":
            if self.ran_task.get(key, True):
                self.tasks_done += self.op_tasks.get(key) or tasks_of(key)
            self.finished_steps.add(step_of(key))
        elif kind == "STEP_SKIPPED":
            self.skipped_steps.add(step_of(key))
        else:
            self.failed.append(key)
            self.reason = self.reason or failure_reason(ev)

    def line(self) -> str:
        """Steps done (a branch a switch did not take counts as done; after a failure, the
        steps it kept from running do not), tasks done, steps running, steps failed."""
        busy = {step_of(k) for k in self.running} | {step_of(k) for k in self.failed}
        done_steps = self.finished_steps | (set() if self.failed else self.skipped_steps)
        line = f"steps done {len(done_steps - busy)}/{self.total}, tasks done {self.tasks_done}"
        if self.running:
            line += f", running: {', '.join(sorted(self.running))}"
        if self.failed:
            line += f", failed: {', '.join(self.failed)}"
        return line


def follow(
    instance: DagsterInstance,
    run_id: str,
    pathspec: str,
    caller: Caller,
    body_end: int | None = None,
) -> None:
    """Print progress (steps done/total, tasks done, steps running) until the run ends, then
    one summary line on stdout; raise unless the run succeeded. `body_end`: the pipe a
    worker forked here closes when the run's body returned (`take_run_body_end`), read
    between polls so that the end is seen at once; closed here."""
    try:
        _follow(instance, run_id, pathspec, caller, body_end)
    finally:
        if body_end is not None:
            with contextlib.suppress(OSError):
                os.close(body_end)


def _follow(
    instance: DagsterInstance, run_id: str, pathspec: str, caller: Caller, body_end: int | None
) -> None:
    from dagster import DagsterEventType
    from metaflow._vendor import click

    from .runtime.heap import resume_collection

    resume_collection()  # this command may now wait for hours
    kinds = {DagsterEventType(name) for name in PROGRESS_EVENTS}
    progress = RunProgress(caller.total_steps)
    started = time.monotonic()
    last, printed = "", 0.0
    cursor = None
    while True:
        records = instance.get_records_for_run(run_id, cursor=cursor, of_type=kinds)
        cursor = records.cursor
        for rec in records.records:
            progress.add(rec.event_log_entry.dagster_event)
        run = settle(instance, instance.get_run_by_id(run_id))
        ended = run is None or run.is_finished
        line, now = progress.line(), time.monotonic()
        if line != last and (ended or now - printed >= PROGRESS_EVERY):
            caller.echo(f"[{now - started:6.1f}s] {line}")
            last, printed = line, now
        if ended:
            break
        pause = poll_interval(now - started)
        if body_end is None:
            time.sleep(pause)
        elif _readable(body_end, pause):
            body_end = None  # the body returned (or the worker died): read once more, then poll
    status = run.status.value if run is not None else "UNKNOWN"
    click.echo(f"{pathspec} {status} | Dagster run {run_id} | {where_to_see(instance, run_id)}")
    if status != "SUCCESS":
        reason = progress.reason or error_of(run)
        why = f": {reason}" if reason else ""
        raise DagsterMetaflowException(
            f"run {pathspec} ended with status {status}{why}; "
            f"{resume_hint(caller.script, pathspec.split('/')[-1])}"
        )


PROGRESS_EVERY = 1.0  # seconds between two progress lines


def _readable(fd: int, timeout: float) -> bool:
    """`fd` is readable (a closed pipe's end of file) within `timeout` seconds (poll, not
    select: any fd number, in a process with many open files)."""
    waiter = select.poll()
    waiter.register(fd, select.POLLIN | select.POLLHUP)
    return bool(waiter.poll(timeout * 1000))


def poll_interval(elapsed: float) -> float:
    """How long `follow` sleeps between two reads of the run: short while a run may be about
    to end (most runs are short, and each poll is two indexed reads), then up to 1 s."""
    return 0.05 if elapsed < 10 else 0.25 if elapsed < 60 else 1.0


def resume_hint(script: str, mf_run_id: str) -> str:
    """How to run again what did not finish in a run of the flow in `script`."""
    return f"to run what did not finish: python {os.path.basename(script)} dagster resume --origin-run-id {mf_run_id}"


def rerun_steps(graph: Any, step: str) -> list[str]:
    """`step` and every step after it in the flow's graph: what `resume --step-to-rerun` runs."""
    if step not in graph:
        steps = getattr(graph, "sorted_nodes", None) or list(graph)  # FlowGraph, or a mapping
        raise DagsterMetaflowException(
            f"--step-to-rerun: the flow has no step {step!r}; its steps: {', '.join(steps)}"
        )
    out: list[str] = []
    todo = [step]
    while todo:
        s = todo.pop()
        if s in out:
            continue
        out.append(s)
        todo.extend(graph[s].out_funcs)
    return sorted(out)


__all__ = [
    "Caller",
    "LaunchError",
    "RunRequest",
    "find_run",
    "follow",
    "list_runs",
    "rerun_steps",
    "resume_hint",
    "start",
    "start_run",
    "status_name",
    "terminate",
    "where_to_see",
]
