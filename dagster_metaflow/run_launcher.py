"""`MetaflowRunLauncher`: Dagster's run launcher for instances that run Metaflow flows.

Dagster's `DefaultRunLauncher` starts run workers through a code server and cannot tell
whether a worker still lives (`supports_check_run_worker_health` is False), so
`dagster-daemon`'s run monitoring never notices a worker killed by the OOM killer or a
`kill -9`, and it cannot resume a run. This launcher starts each worker itself, as a
detached run worker of the job's own interpreter (`python -m dagster_metaflow.run_worker
execute_run`: what a code server's `dagster api execute_run` runs), and so it can
- check a worker's health: the worker's identity (host, pid, start time) is a run tag, so
  a reused pid is never taken for the worker;
- resume a run: `run_worker resume_run` in a new worker for the SAME run; the executor
  replays the run's event log, tasks that finished are not run again, and tasks killed
  with the worker run again as new attempts;
- terminate a run: SIGINT to the verified worker, which stops every step.

In dagster.yaml (README, "Production"):

    run_launcher:
      module: dagster_metaflow.run_launcher
      class: MetaflowRunLauncher
    run_monitoring:
      enabled: true
      max_resume_run_attempts: 3
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dagster import DefaultRunLauncher

from ._dagster_private import CheckRunHealthResult, LaunchRunContext, ResumeRunContext, WorkerStatus
from .runtime.worker import (
    STALE_SECONDS,
    TAG_WORKER,
    WorkerIdentity,
    identity_of,
    settle,
    stop_orphans,
    worker_alive,
)

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun

    from .runtime.zygote import Zygote

WORKER_LOG_DIR = "dagster_metaflow_workers"


def worker_log_path(instance: DagsterInstance, run_id: str) -> str:
    return os.path.join(instance.storage_directory(), WORKER_LOG_DIR, f"{run_id}.log")


def spawn_worker(
    instance: DagsterInstance, run: DagsterRun, resume: bool = False
) -> WorkerIdentity:
    """Start the run's worker (`python -m dagster_metaflow.run_worker execute_run`, or
    `resume_run`: Dagster's `dagster api execute_run`, minus its copy of every event) in its
    own session, with the job's own interpreter, and record the worker's identity on the
    run."""
    from dagster import serialize_value

    from ._dagster_private import ExecuteRunArgs, ResumeRunArgs
    from .runtime.flow import run_worker_env
    from .runtime.zygote import RUN_WORKER_ENV

    cls: Any
    origin = run.job_code_origin
    if origin is None:
        raise RuntimeError(f"run {run.run_id} has no code origin to start a worker from")
    cls = ResumeRunArgs if resume else ExecuteRunArgs
    args = cls(job_origin=origin, run_id=run.run_id, instance_ref=instance.get_ref())
    python = origin.executable_path or sys.executable
    command = [
        python,
        "-m",
        "dagster_metaflow.run_worker",
        "resume_run" if resume else "execute_run",
        serialize_value(args),
    ]
    cwd = _working_directory(origin)
    env = dict(os.environ)
    env["DAGSTER_HOME"] = instance.root_directory
    # the run's flow starts its step zygote once its definitions define it
    env[RUN_WORKER_ENV] = run_worker_env(run.job_name, run.tags)
    log_path = worker_log_path(instance, run.run_id)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log:
        pid = _fork_from_worker_zygote(command, env, cwd, log.fileno())
        if pid is None:
            pid = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            ).pid
    return _record_worker(instance, run.run_id, pid)


def _record_worker(instance: DagsterInstance, run_id: str, pid: int) -> WorkerIdentity:
    """Record `pid` as the run's worker (host, pid, start time); a worker that is already
    gone is recorded with no start time: readers end its run."""
    identity = WorkerIdentity.of(pid) or WorkerIdentity(socket.gethostname(), pid, 0.0)
    instance.add_run_tags(run_id, {TAG_WORKER: identity.tag()})
    return identity


def _fork_from_worker_zygote(
    command: list[str], env: dict[str, str], cwd: str | None, log_fd: int
) -> int | None:
    """The worker's pid, forked by this process's worker zygote (Dagster already imported:
    the run's first event comes ~1 s sooner than from a fresh interpreter); None when
    forking is off or the zygote cannot take it (then the caller starts a subprocess)."""
    from .runtime.zygote import WORKER_POOL, ZygoteUnavailable, fork_enabled

    if not fork_enabled() or command[0] != sys.executable:
        return None
    zygote = WORKER_POOL.get(command[0], env)
    if zygote is None:
        return None
    try:
        return zygote.spawn_detached(command, env, cwd, log_fd)
    except ZygoteUnavailable:
        return None


@contextlib.contextmanager
def step_zygote_for(job_name: str, tags: Mapping[str, str]) -> Iterator[Zygote | None]:
    """The step zygote of the run worker `trigger` is about to fork, started now: it imports
    Metaflow on the other core while this process creates the run, and the worker's first
    step no longer waits for it (~0.1 s). Closed on leaving unless a forked worker took it
    (`fork_worker`); None when forking is off or the job is not a compiled flow here."""
    from .runtime.flow import flow_of_job_named
    from .runtime.zygote import STEP, Zygote, fork_enabled, zygote_env

    zygote = None
    flow = flow_of_job_named(job_name, tags) if fork_enabled() else None
    if flow is not None:
        try:
            zygote = Zygote(sys.executable, zygote_env(flow.command.step_env()), STEP, wait=False)
        except Exception:  # the worker starts its own
            zygote = None
    try:
        yield zygote
    finally:
        if zygote is not None and not zygote.handed_over:
            zygote.close()


# run id -> read end of the pipe its forked worker closes once the run's body returned
_RUN_BODY_ENDS: dict[str, int] = {}


def fork_worker(
    instance: DagsterInstance, run: DagsterRun, step_zygote: Zygote | None = None
) -> WorkerIdentity | None:
    """Start `run`'s worker by forking this process, which has already imported Dagster and
    loaded the run's definitions: the same run body `dagster api execute_run` runs, minus a
    fresh interpreter's ~1 s start. The worker is a grandchild in its own session (it
    outlives the caller and is nobody's zombie), its output goes to the worker log, and its
    identity is recorded as `spawn_worker` records it; it adopts `step_zygote`. None when
    forking is off (`DAGSTER_METAFLOW_FORK=0`) or unsafe here (other threads): then spawn
    instead. The worker closes a pipe once the run's body returned (`take_run_body_end`)."""
    from .runtime.zygote import fork_enabled

    origin = run.job_code_origin
    if not fork_enabled() or threading.active_count() > 1 or origin is None:
        return None
    log_path = worker_log_path(instance, run.run_id)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    ref, cwd = instance.get_ref(), _working_directory(origin)
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    body_end_r, body_end_w = os.pipe()  # closed by the worker once the run's body returned
    try:
        child = os.fork()
    except OSError:
        for fd in (read_end, write_end, body_end_r, body_end_w):
            os.close(fd)
        raise
    if child == 0:  # pragma: no cover - runs in the forked processes
        os.close(read_end)
        os.close(body_end_r)
        _become_worker(
            ref,
            instance.root_directory,
            run.run_id,
            log_path,
            cwd,
            (write_end, body_end_w),
            step_zygote,
        )
    os.close(write_end)
    os.close(body_end_w)
    with os.fdopen(read_end, "rb") as r:
        pid_text = r.read().decode() or "0"
    os.waitpid(child, 0)
    pid = int(pid_text)
    try:
        if pid <= 0:
            return None
        if step_zygote is not None:
            step_zygote.release()  # the worker's now
        identity = _record_worker(instance, run.run_id, pid)
    except BaseException:
        os.close(body_end_r)
        raise
    _RUN_BODY_ENDS[run.run_id] = body_end_r
    return identity


def take_run_body_end(run_id: str) -> int | None:
    """For `trigger --wait`: a pipe's read end that becomes readable (end of file) as soon
    as the worker this process forked for `run_id` has finished the run's body, or died; the
    caller owns (closes) it. None for a worker not forked here."""
    return _RUN_BODY_ENDS.pop(run_id, None)


def _become_worker(
    ref: Any,
    home: str,
    run_id: str,
    log_path: str,
    cwd: str | None,
    fds: tuple[int, int],
    step_zygote: Zygote | None,
) -> None:
    """In the forked child: detach (new session, second fork), report the worker's pid, and
    run the run's body as `dagster api execute_run` would; `fds`: the pipe to report the
    pid on, and the one to close as soon as the body returns (the caller's `--wait` learns
    of the run's end without waiting for its next poll). Never returns."""
    pid_fd, body_end_fd = fds
    code = 1
    try:  # nothing may raise out of here: this child would go on as the caller
        from ._dagster_sqlite import keep_sqlite_connections, release_sqlite_connections
        from .run_worker import run_worker_body
        from .runtime.flow import warm_up_flows
        from .runtime.heap import resume_collection
        from .runtime.zygote import POOL
        from .runtime.zygote_server import fresh_interpreter_signals

        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        os.write(pid_fd, str(os.getpid()).encode())
        os.close(pid_fd)
        with open(os.devnull, "rb") as devnull:
            os.dup2(devnull.fileno(), 0)
        with open(log_path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        fresh_interpreter_signals()  # not the Metaflow CLI's handlers
        if cwd:
            os.chdir(cwd)
        os.environ["DAGSTER_HOME"] = home
        # the caller's heap (Dagster, the definitions) is never garbage here; the caller
        # collected nothing while it started (`heap.defer_collection`): this process will
        resume_collection()

        if step_zygote is not None:
            POOL.adopt(step_zygote)
        # the definitions are loaded already: start (or take over) their zygote while
        # Dagster sets up
        threading.Thread(target=warm_up_flows, name="dagster-metaflow:warm-up", daemon=True).start()
        keep_sqlite_connections()
        code = run_worker_body(ref, run_id)
        os.close(body_end_fd)
    except BaseException:
        traceback.print_exc()
    finally:
        # os._exit runs no atexit handler: what they would close, closed here
        with contextlib.suppress(BaseException):
            release_sqlite_connections()
        with contextlib.suppress(BaseException):
            POOL.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _working_directory(origin: Any) -> str | None:
    pointer = origin.repository_origin.code_pointer
    return getattr(pointer, "working_directory", None) or (
        os.path.dirname(pointer.python_file) if hasattr(pointer, "python_file") else None
    )


def stop_worker(instance: DagsterInstance, run: DagsterRun) -> bool:
    """Ask the run's worker to stop its steps (SIGINT: Dagster's interrupt); True if a live
    worker was signalled. A dead worker's run is ended at once (its orphans stopped)."""
    identity = identity_of(run)
    if identity is not None and identity.signal(signal.SIGINT):
        return True
    settle(instance, run)
    return False


class MetaflowRunLauncher(DefaultRunLauncher):
    """Starts, checks, resumes and stops run workers itself (see module docstring)."""

    def launch_run(self, context: LaunchRunContext) -> None:
        spawn_worker(self._instance, context.dagster_run)

    def resume_run(self, context: ResumeRunContext) -> None:
        spawn_worker(self._instance, context.dagster_run, resume=True)

    @property
    def supports_resume_run(self) -> bool:
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        identity = identity_of(run)
        if identity is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker recorded yet")
        alive = worker_alive(run, identity)
        if alive is None:  # on another host, no heartbeat yet
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"worker on {identity.host}, no heartbeat yet"
            )
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=identity.tag())
        if identity.local:
            # its watchdog died with it (else it would have done this): before the daemon
            # fails or resumes the run, nothing the dead worker started may go on running
            stop_orphans(identity)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker pid {identity.pid} on {identity.host} is gone"
            + ("" if identity.local else f" (no heartbeat for {STALE_SECONDS:g} s)"),
            run_worker_id=identity.tag(),
        )

    def get_run_worker_debug_info(
        self, run: DagsterRun, include_container_logs: bool | None = True
    ) -> str | None:
        """The last lines the worker printed (its log under the instance's storage)."""
        try:
            with open(
                worker_log_path(self._instance, run.run_id), encoding="utf-8", errors="replace"
            ) as f:
                tail = deque(f, maxlen=30)
        except OSError:
            return None
        return "Last lines of the run worker's output:\n" + "".join(tail)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        return stop_worker(self._instance, run)


def uses_metaflow_launcher(instance: Any) -> bool:
    return isinstance(instance.run_launcher, MetaflowRunLauncher)


__all__ = [
    "MetaflowRunLauncher",
    "spawn_worker",
    "stop_worker",
    "worker_log_path",
    "uses_metaflow_launcher",
]
