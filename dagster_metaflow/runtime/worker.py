"""Who runs a Dagster run, and what happens when that process is gone.

A run worker (`dagster_metaflow.run_worker`, what `dagster api execute_run` / `resume_run`
run) is identified by host, pid and the process's start time: a pid alone is reused by the
kernel, so nothing here signals or trusts a pid whose start time differs from the recorded
one. On this host the start is compared in clock ticks since boot (proc_start.py): the start
time in seconds since the epoch moves when the clock is slewed, and a live worker was once
taken for dead that way. The worker records itself in the run tag `dagster-metaflow/worker` when its executor
starts, and exports the same identity to every process it starts
(`DAGSTER_METAFLOW_WORKER`, inherited through fork, exec and `setsid`), which is how the
watchdog (watchdog.py) and `terminate` find a dead worker's orphans.

`settle` is what every reader calls before trusting a run's status (CLI `status`,
`list-runs`, `--wait`, the Deployer): a run still STARTED whose local worker is dead is
declared failed there and then, so no daemon is needed to notice.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from .proc_start import boot_id, start_ticks
from .supervise import process_running

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun

# Dagster's hidden-tag prefix: internal bookkeeping, kept out of the UI's runs list
TAG_WORKER = ".dagster/metaflow-worker"
TAG_HEARTBEAT = ".dagster/metaflow-worker-heartbeat"  # unix time, renewed while the worker runs
_OLD_TAGS = {
    TAG_WORKER: "dagster-metaflow/worker",
    TAG_HEARTBEAT: "dagster-metaflow/worker-heartbeat",
}
HEARTBEAT_SECONDS = 20.0
STALE_SECONDS = 120.0  # a worker on another host silent this long is taken for dead
WORKER_VAR = "DAGSTER_METAFLOW_WORKER"
RECOVERING_VAR = "DAGSTER_METAFLOW_RECOVERING"  # set in a worker that resumes a run
# how close two readings of one process's start time since the epoch are, for tags without
# `since_boot` (written before it): psutil derives it from clock ticks
_START_TOLERANCE = 0.05
LOST = "run worker lost"


@dataclass(frozen=True)
class WorkerIdentity:
    """host, pid and start time of one process: stable across pid reuse. `since_boot`
    (`<clock ticks since boot>@<boot id>`, Linux) is the start that clock adjustments do
    not move; tags written before it existed have none and are compared by `started`."""

    host: str
    pid: int
    started: float
    since_boot: str | None = None

    def tag(self) -> str:
        base = f"{self.host}/{self.pid}/{self.started:.2f}"
        return f"{base}/{self.since_boot}" if self.since_boot else base

    @classmethod
    def parse(cls, text: str | None) -> WorkerIdentity | None:
        if not text:
            return None
        since_boot = None
        rest_of_tag, _, last = text.rpartition("/")
        if "@" in last:
            text, since_boot = rest_of_tag, last
        host, _, rest = text.rpartition("/")
        host, _, pid = host.rpartition("/")
        try:
            identity = cls(host, int(pid), float(rest), since_boot)
        except ValueError:
            return None
        return identity if identity.pid > 0 else None

    @classmethod
    def of(cls, pid: int) -> WorkerIdentity | None:
        """The identity of a running process on this host (None if it is gone)."""
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            return None
        return cls(socket.gethostname(), pid, started, _since_boot(pid))

    @property
    def local(self) -> bool:
        return self.host == socket.gethostname()

    def process(self) -> psutil.Process | None:
        """The process itself, only while it runs and is the one recorded (not a reused pid)."""
        if not self.local:
            return None
        try:
            proc = psutil.Process(self.pid)
            if self.same_start(WorkerIdentity(self.host, self.pid, proc.create_time(), _since_boot(self.pid))):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    return proc
        except psutil.Error:
            pass
        return None

    def same_start(self, seen: WorkerIdentity) -> bool:
        """Whether `seen` (a reading of the same host and pid) is this process: by the start
        in ticks since boot where both have it (a zombie or unreadable one has none), by the
        start time since the epoch where this identity has no ticks (a tag written before
        them) or this host cannot read its boot id."""
        if seen.host != self.host or seen.pid != self.pid:
            return False
        if self.since_boot is not None and boot_id() is not None:
            return seen.since_boot == self.since_boot
        return abs(seen.started - self.started) < _START_TOLERANCE

    def alive(self) -> bool | None:
        """True/False on this host; None where it cannot be told (another host)."""
        if not self.local:
            return None
        return self.process() is not None

    def signal(self, sig: int) -> bool:
        """Signal the worker, never a process that merely reuses its pid."""
        proc = self.process()
        if proc is None:
            return False
        try:
            proc.send_signal(sig)
            return True
        except psutil.Error:
            return False


def _since_boot(pid: int) -> str | None:
    """`<start ticks>@<boot id>` of process `pid`; None if gone or not Linux."""
    ticks, boot = start_ticks(pid), boot_id()
    return None if ticks is None or boot is None else f"{ticks}@{boot}"


def identity_of(run: DagsterRun) -> WorkerIdentity | None:
    return WorkerIdentity.parse(run_tag(run, TAG_WORKER))


def run_tag(run: DagsterRun, key: str) -> str | None:
    """A worker tag, also from runs recorded before the tag was hidden (no `.dagster/`)."""
    value = run.tags.get(key)
    return value if value is not None else run.tags.get(_OLD_TAGS.get(key, key))


def worker_alive(run: DagsterRun, identity: WorkerIdentity) -> bool | None:
    """Whether the run's worker runs: by its process on this host, by its heartbeat from
    another host (None when neither tells)."""
    if identity.local:
        return identity.alive()
    try:
        beat = float(run_tag(run, TAG_HEARTBEAT) or "")
    except ValueError:
        return None
    return time.time() - beat < STALE_SECONDS


class _Heartbeat(threading.Thread):
    """Renews the run's heartbeat tag, so readers on other hosts can tell the worker lives."""

    def __init__(self, instance: DagsterInstance, run_id: str) -> None:
        super().__init__(name="dagster-metaflow:heartbeat", daemon=True)
        self.instance, self.run_id = instance, run_id
        self.stopped = threading.Event()

    def run(self) -> None:
        # the first beat is written with the worker's identity (`record_self`)
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                self.instance.add_run_tags(self.run_id, {TAG_HEARTBEAT: heartbeat_now()})
            except Exception:  # a busy storage: the next beat will do
                pass


def heartbeat_now() -> str:
    return f"{time.time():.0f}"


def record_self(
    instance: DagsterInstance, run: DagsterRun, resumed: bool = False
) -> WorkerIdentity | None:
    """Record this process as the run's worker and export its identity to its children."""
    me = WorkerIdentity.of(os.getpid())
    if me is None:
        return None
    fresh = {} if resumed else _inherited_outcome(run)
    instance.add_run_tags(
        run.run_id, {TAG_WORKER: me.tag(), TAG_HEARTBEAT: heartbeat_now(), **fresh}
    )
    os.environ[WORKER_VAR] = me.tag()
    return me


def _inherited_outcome(run: DagsterRun) -> dict[str, str]:
    """A re-executed run starts with its parent's tags, the parent's error among them:
    blanked when its first worker starts (only a worker writes them, at the run's end), so
    `status`, `list-runs --timed-out` and the UI speak of this run."""
    from .failures import TAG_ERROR, TAG_TIMED_OUT

    if not run.parent_run_id:
        return {}
    return {key: "" for key in (TAG_ERROR, TAG_TIMED_OUT) if run.tags.get(key)}


def orphans(identity: WorkerIdentity, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Every process on this host started (directly or not) by the worker `identity`."""
    skip = {os.getpid(), identity.pid, *exclude}
    out = []
    for p in psutil.process_iter():
        if p.pid in skip:
            continue
        try:
            carried = WorkerIdentity.parse(p.environ().get(WORKER_VAR))
        except (psutil.Error, OSError):
            continue
        # the worker's own reading and the run tag's (written by the launcher, read there
        # separately) may differ in the start time since the epoch: compared as starts
        if carried is not None and identity.same_start(carried):
            out.append(p)
    return out


def stop_orphans(identity: WorkerIdentity, grace: float = 10.0, limit: float = 25.0) -> int:
    """SIGTERM every orphan of a dead worker, SIGKILL what is left after `grace`; look again
    until none are left (a dying step may start more). Returns how many were found."""
    seen: set[int] = set()
    deadline = time.monotonic() + limit
    while True:
        procs = orphans(identity)
        if not procs:
            return len(seen)
        fresh = [p for p in procs if p.pid not in seen]
        seen.update(p.pid for p in procs)
        for p in fresh:
            _send(p, signal.SIGTERM)
        end = min(time.monotonic() + grace, deadline)
        alive = procs
        while alive and time.monotonic() < end:
            time.sleep(0.2)
            alive = [p for p in alive if process_running(p)]
        for p in alive:
            _send(p, signal.SIGKILL)
        if time.monotonic() >= deadline:
            for p in orphans(identity):
                _send(p, signal.SIGKILL)
            return len(seen)


def _send(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass


def resume_expected(instance: DagsterInstance, run: DagsterRun) -> bool:
    """The daemon's run monitoring will start a new worker for this run (our launcher, with
    `max_resume_run_attempts` left) and is running."""
    try:
        launcher = instance.run_launcher
        if not (instance.run_monitoring_enabled and launcher.supports_resume_run):
            return False
        if (
            instance.count_resume_run_attempts(run.run_id)
            >= instance.run_monitoring_max_resume_run_attempts
        ):
            return False
        return _monitoring_daemon_alive(instance)
    except Exception:
        return False


def _monitoring_daemon_alive(instance: DagsterInstance) -> bool:
    beats = instance.get_daemon_heartbeats()
    beat = beats.get("MONITORING")
    return beat is not None and time.time() - beat.timestamp < 120


def lost_message(run: DagsterRun, identity: WorkerIdentity) -> str:
    from .ids import metaflow_run_id

    return (
        f"The run worker (pid {identity.pid} on {identity.host}) died; its step processes were "
        f"stopped. The Metaflow run {metaflow_run_id(run.run_id)} did not finish: resume it with "
        f"`python <flow>.py dagster resume --origin-run-id {metaflow_run_id(run.run_id)}`"
    )


def end_lost_run(
    instance: DagsterInstance,
    run: DagsterRun,
    identity: WorkerIdentity,
    before_failing: Callable[[DagsterRun, str], None] | None = None,
) -> bool:
    """After the worker `identity` died: stop what it left on this host, then end its run
    (CANCELED if termination was asked, else FAILURE, with an engine event saying why)
    unless it has ended or the daemon will resume it. True when a resume is expected.
    The processes go first, so no task succeeds in a run declared dead, and none runs
    beside the attempts of a resumed worker. `before_failing(run, why)` runs just before
    the run is failed (the watchdog's notifications)."""
    from dagster import DagsterRunStatus

    if identity.local:  # elsewhere, that host's watchdog stops them
        stop_orphans(identity)
    fresh = instance.get_run_by_id(run.run_id)
    if fresh is None or fresh.is_finished:
        return False
    if fresh.status != DagsterRunStatus.CANCELING and resume_expected(instance, fresh):
        return True
    message = f"{LOST}: {lost_message(fresh, identity)}"
    if fresh.status == DagsterRunStatus.CANCELING:
        instance.report_run_canceled(fresh, message=message)
    else:
        instance.report_engine_event(message, fresh)
        if before_failing is not None:
            before_failing(fresh, message)
        instance.report_run_failed(fresh, message=message)
    return False


def settle(instance: DagsterInstance, run: DagsterRun | None) -> DagsterRun | None:
    """The run as it really is: a run in progress whose worker is known dead is ended now
    (its orphans stopped), unless the daemon will resume it."""
    from dagster import DagsterRunStatus

    if run is None or run.status not in (
        DagsterRunStatus.STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.CANCELING,
    ):
        return run
    identity = identity_of(run)
    if identity is None or worker_alive(run, identity) is not False:
        return run
    end_lost_run(instance, run, identity)
    return instance.get_run_by_id(run.run_id)


__all__ = [
    "TAG_WORKER",
    "WORKER_VAR",
    "WorkerIdentity",
    "identity_of",
    "worker_alive",
    "record_self",
    "stop_orphans",
    "settle",
    "end_lost_run",
    "resume_expected",
    "watched",
]


@contextmanager
def watched(
    instance: DagsterInstance,
    run: DagsterRun,
    resumed: bool = False,
    watchdog_env: Mapping[str, str] | None = None,
) -> Iterator[None]:
    """While the run's steps execute: this process is the run's recorded worker, and a
    watchdog stops its orphans and ends the run if it dies. In a worker that resumes a run,
    steps reuse the tasks that already finished (RECOVERING_VAR)."""
    if resumed:
        os.environ[RECOVERING_VAR] = "1"
    if instance.is_ephemeral:  # in-process execution (tests): nobody else can see the run
        yield
        return
    run_id = run.run_id
    me = record_self(instance, run, resumed)
    heartbeat = _Heartbeat(instance, run_id)
    heartbeat.start()
    watchdog = None
    if me is not None:
        from dagster import serialize_value

        from .watchdog import start

        try:
            env = {**os.environ, **(watchdog_env or {})}
            watchdog = start(me.tag(), run_id, serialize_value(instance.get_ref()), env)
        except Exception:
            watchdog = None
    try:
        yield
    finally:
        heartbeat.stopped.set()
        if watchdog is not None:  # the run ended here: nothing for the watchdog to do
            watchdog.terminate()
            try:
                watchdog.wait(timeout=5)
            except Exception:
                pass
